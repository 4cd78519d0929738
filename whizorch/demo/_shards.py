"""The demo's view of the shards: who leads each one, read from the orchestrators'
events, and what moved when the demo killed one orchestrator.

Each orchestrator prints a ``leader`` or ``follower`` event per shard, with the term
(the shard's fencing token, which only grows). `ShardBoard` keeps each shard's latest
leader, picks the orchestrator to kill (the one leading the most shards; shard 0's
leader among equals), and from the kill on records each of the victim's shards led
again (by whom, how long after the kill), and any other shard whose leader changed:
none should, a shard stays with its leader while that leader lives (docs/design.md,
"Shards"). Plain data, filled in from the event loop; both displays and the summary
read it.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from whizorch.saga import shard_of

__all__ = ["FirstSaga", "Lead", "Move", "ShardBoard", "Upset", "shard_list"]


@attrs.frozen
class Lead:
    """A shard's leader as its last event said."""

    node: str
    term: int


@attrs.frozen
class Move:
    """One of the victim's shards, led again."""

    shard: int
    node: str
    """The new leader."""
    term: int
    after_s: float
    """The kill -> the new leader's ``leader`` event (its own clock's time of it)."""


@attrs.frozen
class Upset:
    """A shard the victim did not lead whose leadership changed after the kill."""

    shard: int
    before: str | None
    """Its leader at the kill (None: it had none)."""
    after: str | None
    """Its leader now (None: it lost its leader)."""


@attrs.frozen
class FirstSaga:
    """The first saga that finished on one of the victim's shards after the kill."""

    saga_id: str
    shard: int
    node: str
    after_s: float


def shard_list(shards: Iterable[int], *, marked: Iterable[int] = (), limit: int = 0) -> str:
    """``0,3,6``; the ``marked`` ones get a ``*``; past ``limit`` characters (0: no
    limit) the rest are counted: ``0,3,6,9,...+5``."""
    stars = set(marked)
    parts = [f"{k}*" if k in stars else str(k) for k in sorted(shards)]
    text = ",".join(parts) or "-"
    if limit and len(text) > limit:
        shown: list[str] = []
        for i, p in enumerate(parts):
            rest = f",...+{len(parts) - i}"
            if len(",".join([*shown, p])) + len(rest) > limit and shown:
                return ",".join(shown) + rest
            shown.append(p)
    return text


@attrs.define
class ShardBoard:
    """Every shard's leader, and what the kill of one orchestrator moved."""

    count: int = 0
    """The namespace's shards (set before the orchestrators start)."""
    leaders: dict[int, Lead] = attrs.Factory(dict)
    victim: str | None = None
    """The orchestrator the demo killed."""
    kill_at: float = 0.0
    """Monotonic time of the kill."""
    kill_wall: float = 0.0
    """Wall-clock time of the kill (the orchestrators stamp their events with theirs)."""
    at_kill: dict[int, Lead] = attrs.Factory(dict)
    """Every shard's leader when the victim was killed."""
    moves: dict[int, Move] = attrs.Factory(dict)
    upsets: list[Upset] = attrs.Factory(list)
    first_saga: FirstSaga | None = None

    # -- reading -----------------------------------------------------------------------

    def led_by(self, nodes: Sequence[str] = ()) -> dict[str, list[int]]:
        """Node -> the shards it leads now, sorted (every node of ``nodes`` listed, in
        that order, even when it leads none)."""
        out: dict[str, list[int]] = {n: [] for n in nodes}
        for k, lead in sorted(self.leaders.items()):
            out.setdefault(lead.node, []).append(k)
        return out

    @property
    def led(self) -> int:
        """Shards with a leader (the killed one's no longer count)."""
        return sum(1 for lead in self.leaders.values() if lead.node != self.victim)

    @property
    def all_led(self) -> bool:
        """Every shard has a leader."""
        return self.count > 0 and all(k in self.leaders for k in range(self.count))

    def balanced(self, nodes: Sequence[str]) -> bool:
        """Every shard is led, and by ``nodes`` only, each leading an even share
        (``count // len(nodes)`` shards or one more), as the assignment settles."""
        if not self.all_led or not nodes:
            return False
        low, high = self.count // len(nodes), -(-self.count // len(nodes))
        by = self.led_by(nodes)
        return set(by) == set(nodes) and all(low <= len(by[n]) <= high for n in nodes)

    def pick_victim(self, nodes: Sequence[str]) -> str | None:
        """The one of ``nodes`` leading the most shards (shard 0's leader among equals,
        then the first); None when none leads any."""
        by = self.led_by(nodes)
        ranked = sorted(
            (n for n in nodes if by[n]), key=lambda n: (-len(by[n]), 0 not in by[n], list(nodes).index(n))
        )
        return ranked[0] if ranked else None

    @property
    def victim_shards(self) -> list[int]:
        """The shards the victim led when it was killed."""
        return sorted(k for k, lead in self.at_kill.items() if lead.node == self.victim)

    @property
    def waiting(self) -> list[int]:
        """The victim's shards not led again yet."""
        return [k for k in self.victim_shards if k not in self.moves]

    @property
    def all_moved(self) -> bool:
        """Every shard the victim led has a new leader."""
        return self.victim is not None and bool(self.victim_shards) and not self.waiting

    def failover_s(self) -> tuple[float | None, float | None]:
        """(slowest, median) of the kill -> led again times of the victim's shards
        (of those led again so far)."""
        took = [m.after_s for m in self.moves.values()]
        return (max(took), statistics.median(took)) if took else (None, None)

    def shard_of(self, saga_id: str) -> int | None:
        """A saga's shard (None before the count is known)."""
        return shard_of(saga_id, self.count) if self.count > 0 else None

    # -- events ------------------------------------------------------------------------

    def on_leader(self, node: str, shard: int, term: int, *, at: float, wall: float | None) -> Move | Upset | None:
        """``node`` leads ``shard`` from term ``term`` (``at``: monotonic time the event
        was read; ``wall``: the event's own time). An event older than what the board
        holds (a lower term, read late from another process's pipe) changes nothing.
        Returns what the kill made of it: one of the victim's shards led again, or
        another shard upset."""
        if not 0 <= shard < self.count:
            return None
        current = self.leaders.get(shard)
        if current is not None and term <= current.term:
            return None
        self.leaders[shard] = Lead(node, term)
        if self.victim is None or node == self.victim:
            return None
        if shard in self.victim_shards:
            if shard in self.moves:
                return None
            after = wall - self.kill_wall if wall is not None else at - self.kill_at
            move = Move(shard, node, term, round(max(0.0, after), 4))
            self.moves[shard] = move
            return move
        before = self.at_kill.get(shard)
        upset = Upset(shard, before.node if before else None, node)
        self.upsets.append(upset)
        return upset

    def on_follower(self, node: str, shard: int) -> Upset | None:
        """``node`` no longer leads ``shard`` (an event about a leadership the board
        no longer holds changes nothing)."""
        current = self.leaders.get(shard)
        if current is None or current.node != node:
            return None
        del self.leaders[shard]
        if self.victim is None or shard in self.victim_shards:
            return None
        upset = Upset(shard, node, None)
        self.upsets.append(upset)
        return upset

    def on_kill(self, victim: str, *, at: float, wall: float) -> list[int]:
        """The demo killed ``victim``: note every shard's leader now; the victim's shards."""
        self.victim, self.kill_at, self.kill_wall = victim, at, wall
        self.at_kill = dict(self.leaders)
        return self.victim_shards

    def on_finished(self, saga_id: str, node: str, *, at: float) -> FirstSaga | None:
        """A saga finished under ``node`` (monotonic ``at``): the first one on a shard the
        victim led, finished after the kill, is noted and returned."""
        if self.victim is None or self.first_saga is not None or node == self.victim:
            return None
        shard = self.shard_of(saga_id)
        if shard is None or shard not in self.victim_shards:
            return None
        self.first_saga = FirstSaga(saga_id, shard, node, round(at - self.kill_at, 4))
        return self.first_saga

    # -- showing -----------------------------------------------------------------------

    def line(self, nodes: Sequence[str], *, killed: Iterable[str] = (), limit: int = 0) -> str:
        """``orch-1 0,3,6 | orch-2 1,4,7 | orch-3 2,5``: the shards each leads now; a
        shard led again after the kill has a ``*``; a killed node says so."""
        dead = set(killed)
        out = []
        for node, led in self.led_by(nodes).items():
            text = shard_list(led, marked=[k for k in led if k in self.moves], limit=limit)
            out.append(f"{node} KILLED" + (f" (held {text})" if led else "") if node in dead else f"{node} {text}")
        return " | ".join(out)

    def moves_text(self, *, now: float | None = None) -> str:
        """``1 -> orch-1 2.31s, 4 -> orch-3 2.35s, 7 waiting 1.2s``: each of the
        victim's shards (``now``, monotonic, times the ones still waiting)."""
        parts = []
        for k in self.victim_shards:
            m = self.moves.get(k)
            if m is not None:
                parts.append(f"{k} -> {m.node} {m.after_s:.2f}s")
            else:
                parts.append(f"{k} waiting" + (f" {now - self.kill_at:.1f}s" if now is not None else ""))
        return ", ".join(parts)

    def to_json(self, nodes: Sequence[str]) -> dict[str, Any]:
        """The figures for the summary (``shards`` of ``--json-summary``)."""
        at_kill: dict[str, list[int]] = {n: [] for n in nodes}
        for k, lead in sorted(self.at_kill.items()):
            at_kill.setdefault(lead.node, []).append(k)
        victim_shards = self.victim_shards
        kept = [k for k in range(self.count) if k not in victim_shards and k not in {u.shard for u in self.upsets}]
        return {
            "count": self.count,
            "orchestrators": list(nodes),
            "at_kill": at_kill if self.victim is not None else None,
            "now": self.led_by(nodes),
            "victim": self.victim,
            "victim_shards": victim_shards,
            "moved": [
                {"shard": m.shard, "from": self.victim, "to": m.node, "term": m.term, "after_s": round(m.after_s, 3)}
                for m in sorted(self.moves.values(), key=lambda m: m.shard)
            ],
            "not_led_again": self.waiting,
            "kept_their_leader": kept if self.victim is not None else [],
            "others_changed": [{"shard": u.shard, "from": u.before, "to": u.after} for u in self.upsets],
        }
