"""The seeded nemesis: one fault at a time, healed, a random gap, the next.

Every random number comes from the seed's own `random.Random`, drawn in the same order
whatever happens at run time (a `Draw` per fault), so a seed replays the same
schedule of choices; which process a choice lands on ("the leader", "the member
eu-1 sits on") is resolved when the fault happens, and printed.

Faults (`KINDS`, drawn with `WEIGHTS`): SIGKILL of a worker or of a shard leader
(restarted after a random delay, as a supervisor would); SIGSTOP of one of them for a
random time (shorter or longer than the lease TTL), then SIGCONT; SIGKILL of an etcd
member then a restart, SIGSTOP/SIGCONT of a member (the Raft leader, a follower, or
the member a chosen role's connection sits on); and every client connection through
one member's proxy dropped. A shard leader is an orchestrator that leads shards, picked
with a weight of the shards it leads (as if a led shard were drawn and its leader hit),
so the leader of several shards is hit most; the fault names the shards it led.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from whizorch import EtcdClient, WhizorchError
from whizorch.testing import EtcdMember, LocalEtcdCluster

from .proxy import Proxies
from .roles import Deployment, Role

__all__ = ["KINDS", "WEIGHTS", "Draw", "Fault", "Nemesis", "pick_shard_leader"]

WEIGHTS = {
    "kill worker": 1, "kill leader": 2,
    "pause worker": 1, "pause leader": 2,
    "kill etcd": 1, "pause etcd": 1, "drop etcd": 1,
}  # fmt: skip
"""How often each kind of fault is drawn, relative to the others: the orchestrators'
faults are 4 in 9, the workers' 2 and etcd's 3, as when one leader and one follower
were hit as often as each other."""
KINDS = tuple(WEIGHTS)
_WHEEL = tuple(kind for kind, weight in WEIGHTS.items() for _ in range(weight))
MEMBER_CHOICES = ("raft leader", "raft follower", "member of role")


def pick_shard_leader(led: Mapping[str, Sequence[int]], u: float) -> str | None:
    """The orchestrator hit by a shard-leader fault: ``u`` (in [0, 1)) picks one of the
    led shards, in the order of ``led`` (orchestrator -> the shards it leads), and its
    leader is hit, so an orchestrator is hit in proportion to the shards it leads.
    None when nobody leads a shard."""
    shards = [(name, k) for name, ks in led.items() for k in ks]
    if not shards:
        return None
    return shards[min(int(u * len(shards)), len(shards) - 1)][0]


@dataclass(frozen=True)
class Draw:
    """The random choices of one fault (drawn whether or not the kind uses them)."""

    kind: str
    member_choice: str
    pick: float
    """Which worker / shard leader / role, as a fraction of the candidates (for a
    shard leader, of the shards led)."""
    hold_s: float
    """How long the fault lasts (restart delay, pause length)."""
    gap_s: float
    """Quiet time after the heal, before the next fault."""

    @classmethod
    def draw(cls, rng: random.Random, ttl_s: float) -> Draw:
        kind = _WHEEL[rng.randrange(len(_WHEEL))]
        member_choice = MEMBER_CHOICES[rng.randrange(len(MEMBER_CHOICES))]
        pick = rng.random()
        restart = rng.uniform(0.1, 2.5)
        pause = rng.uniform(0.3, 2 * ttl_s + 1.0)  # about half shorter than the TTL, half longer
        gap = rng.uniform(0.5, 3.0)
        hold = restart if kind.startswith("kill") else pause if kind.startswith("pause") else 0.0
        return cls(kind, member_choice, pick, round(hold, 3), round(gap, 3))


@dataclass
class Fault:
    """One fault as it happened (times in seconds since the run began)."""

    index: int
    draw: Draw
    target: str = ""
    at: float = 0.0
    healed_at: float | None = None
    back_s: float | None = None
    """Seconds from the heal until every role was back (None: not within the gap)."""
    note: str = ""
    shards: tuple[int, ...] = ()
    """The shards the victim led when it was hit (an orchestrator)."""

    def describe(self) -> str:
        healed = f"healed +{self.healed_at:.2f}s" if self.healed_at is not None else "NOT HEALED"
        extra = f" ({self.note})" if self.note else ""
        back = f", all back +{self.back_s:.2f}s" if self.back_s is not None else ", not all back within the gap"
        return (f"+{self.at:6.2f}s #{self.index:<3d} {self.draw.kind:<14s} {self.target}, hold {self.draw.hold_s:.2f}s, "
                f"{healed}{back}{extra}")


class Nemesis:
    """Injects `Draw` after `Draw` for ``duration_s``; `last_heal` is when the last healed."""

    def __init__(
        self,
        rng: random.Random,
        *,
        deployment: Deployment,
        cluster: LocalEtcdCluster,
        proxies: Proxies,
        observer: EtcdClient,
        namespace: str,
        ttl_s: float,
        t0: float,
        log: Callable[[str], None],
        probe: Callable[[], Awaitable[list[str]]] | None = None,
    ) -> None:
        self.rng = rng
        self.deployment = deployment
        self.cluster = cluster
        self.proxies = proxies
        self.observer = observer
        self.namespace = namespace
        self.ttl_s = ttl_s
        self.t0 = t0
        self.log = log
        self.probe = probe
        """What is still missing from the deployment (empty: every role is back)."""
        self.faults: list[Fault] = []
        self.last_heal = t0

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def run(self, duration_s: float) -> list[Fault]:
        """Fault, heal, gap, until ``duration_s`` after ``t0``."""
        while self.now() < duration_s:
            fault = Fault(len(self.faults) + 1, Draw.draw(self.rng, self.ttl_s))
            self.faults.append(fault)
            await self._inject(fault)
            self.last_heal = time.monotonic()
            fault.healed_at = self.now()
            self.log(f"[heal  +{fault.healed_at:6.2f}s] #{fault.index} {fault.target}{' (' + fault.note + ')' if fault.note else ''}")
            await self._gap(fault)
        return self.faults

    async def _gap(self, fault: Fault) -> None:
        """The seed's quiet time after a heal; meanwhile, measure how soon every role is back."""
        healed = time.monotonic()
        end = healed + fault.draw.gap_s
        while self.probe is not None and time.monotonic() < end:
            try:
                async with asyncio.timeout(max(0.05, end - time.monotonic())):
                    missing = await self.probe()
            except (WhizorchError, TimeoutError):
                missing = ["etcd did not answer"]
            if not missing:
                fault.back_s = time.monotonic() - healed
                self.log(f"[back  +{self.now():6.2f}s] #{fault.index} every role back {fault.back_s:.2f}s after the heal")
                break
            await asyncio.sleep(0.1)  # ok: polling the deployment within the seed's gap
        left = end - time.monotonic()
        if left > 0:
            await asyncio.sleep(left)  # ok: the rest of the seed's gap between faults

    # -- resolving targets ---------------------------------------------------------------

    async def shard_leaders(self) -> dict[int, tuple[str, int]]:
        """Each led shard's leader now: the node and term (create revision) of the first
        key in its election ``<ns>/leader/<shard>/``; empty when etcd does not answer."""
        head = f"{self.namespace}/leader/"
        try:
            res = await self.observer.get(head, prefix=True, sort_target="create", sort_order="ascend")
        except WhizorchError:
            return {}
        out: dict[int, tuple[str, int]] = {}
        for kv in res.kvs:
            shard = kv.key.decode(errors="replace")[len(head) :].partition("/")[0]
            if shard.isdigit() and int(shard) not in out:
                out[int(shard)] = (kv.value.decode(errors="replace"), kv.create_revision)
        return out

    def _leading(self, role: Role, shard: int, term: int) -> bool:
        """Whether ``role``'s current process said it leads ``shard`` in ``term`` (and not
        since that it stopped): a restarted process shares its node id with the keys of
        a dead one."""
        child = role.child
        if child is None:
            return False
        last: dict[str, object] = {}
        for _, line in child.lines:
            if '"leader"' in line or '"follower"' in line:
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict) and event.get("event") in ("leader", "follower") \
                            and event.get("shard") == shard:
                        last = event
        return last.get("event") == "leader" and last.get("term") == term

    async def led(self, orchestrators: list[Role]) -> dict[str, list[int]]:
        """Which shards each of ``orchestrators`` leads: by its process's own events, else
        (taking a shard over, no event yet) by the node id on the shard's leader key."""
        out: dict[str, list[int]] = {r.name: [] for r in orchestrators}
        for shard, (node, term) in sorted((await self.shard_leaders()).items()):
            role = next((r for r in orchestrators if self._leading(r, shard, term)), None) \
                or next((r for r in orchestrators if r.name == node), None)
            if role is not None:
                out[role.name].append(shard)
        return out

    @staticmethod
    def _pick(items: list[Role], u: float) -> Role | None:
        return items[min(int(u * len(items)), len(items) - 1)] if items else None

    async def _role(self, draw: Draw) -> tuple[Role | None, tuple[int, ...]]:
        """The role ``draw`` hits, and the shards it leads (an orchestrator)."""
        running = [r for r in self.deployment.roles.values() if r.state == "running" and not r.lock.locked()]
        if draw.kind.split()[1] == "worker":
            return self._pick([r for r in running if r.spec.kind == "worker"], draw.pick), ()
        orchestrators = sorted((r for r in running if r.spec.kind == "orchestrator"), key=lambda r: r.name)
        led = await self.led(orchestrators)
        name = pick_shard_leader(led, draw.pick)
        victim = next((r for r in orchestrators if r.name == name), None)
        return victim, tuple(led[name]) if name is not None else ()

    def member_of(self, role: Role) -> EtcdMember | None:
        """The member ``role``'s most recently active connection goes to."""
        pid = role.pid
        name = None
        if pid is not None:
            seen = self.proxies.connected_members(pid)
            if seen:
                name = seen[0][0]
        if name is None:
            first = self.deployment.endpoints_for(role.spec)[0]
            name = self.proxies.name_of_port(int(first.rpartition(":")[2]))
        return next((m for m in self.cluster.members if m.name == name), None)

    async def _member(self, draw: Draw) -> tuple[EtcdMember | None, str]:
        members = [m for m in self.cluster.members if m.is_running and not m.is_paused]
        if draw.member_choice == "member of role":
            roles = [r for r in self.deployment.roles.values() if r.pid is not None]
            role = self._pick(roles, draw.pick)
            if role is not None:
                member = self.member_of(role)
                if member is not None and member in members:
                    return member, f"the member {role.name} sits on"
        try:
            leader = await asyncio.to_thread(self.cluster.wait_leader, 10.0)
        except WhizorchError:
            leader = None
        if draw.member_choice == "raft leader" and leader is not None:
            return leader, "the Raft leader"
        followers = [m for m in members if m is not leader]
        if not followers:
            return None, ""
        return followers[min(int(draw.pick * len(followers)), len(followers) - 1)], "a Raft follower"

    # -- faults --------------------------------------------------------------------------

    async def _inject(self, fault: Fault) -> None:
        draw = fault.draw
        fault.at = self.now()
        if draw.kind.endswith("etcd"):
            await self._etcd_fault(fault)
        else:
            await self._role_fault(fault)

    async def _role_fault(self, fault: Fault) -> None:
        draw = fault.draw
        role, fault.shards = await self._role(draw)
        if role is None:
            fault.target, fault.note = "nobody", f"no {draw.kind.split()[1]} to hit"
            self.log(f"[fault +{fault.at:6.2f}s] #{fault.index} {draw.kind}: no target")
            return
        async with role.lock:
            member = self.member_of(role)
            leads = f"; leads shard(s) {','.join(map(str, fault.shards))}" if fault.shards else ""
            fault.target = f"{role.name} (pid {role.pid}, on {member.name if member else '?'}{leads})"
            self.log(f"[fault +{fault.at:6.2f}s] #{fault.index} {draw.kind} {fault.target} for {draw.hold_s:.2f}s")
            if draw.kind.startswith("kill"):
                await self.deployment.kill(role)
                await asyncio.sleep(draw.hold_s)  # ok: the supervisor's restart delay (from the seed)
                await self.deployment.restart(role)
                fault.note = f"restarted as pid {role.pid}"
            else:
                self.deployment.pause(role)
                await asyncio.sleep(draw.hold_s)  # ok: the pause length (from the seed)
                self.deployment.resume(role)

    async def _etcd_fault(self, fault: Fault) -> None:
        draw = fault.draw
        member, why = await self._member(draw)
        if member is None:
            fault.target, fault.note = "nobody", "no member to hit"
            self.log(f"[fault +{fault.at:6.2f}s] #{fault.index} {draw.kind}: no target")
            return
        fault.target = f"{member.name} ({why})"
        self.log(f"[fault +{fault.at:6.2f}s] #{fault.index} {draw.kind} {fault.target}"
                 + (f" for {draw.hold_s:.2f}s" if draw.hold_s else ""))
        if draw.kind == "drop etcd":
            dropped = await self.proxies.drop(member.name)
            fault.note = f"{dropped} connection(s) reset"
        elif draw.kind == "kill etcd":
            await member.akill()
            await asyncio.sleep(draw.hold_s)  # ok: down time before the restart (from the seed)
            await member.astart(timeout=30.0)
        else:
            await asyncio.to_thread(member.pause)
            await asyncio.sleep(draw.hold_s)  # ok: the pause length (from the seed)
            await asyncio.to_thread(member.resume)
            await self.cluster.await_healthy(30.0)
