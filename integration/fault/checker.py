"""The fault suite's invariants, as pure functions over what a run collected.

Nothing here does IO or imports whizorch: the suite reads etcd and the handlers'
JSONL files into a `History`, and `check` returns the `Violation` list (empty when
the run was correct). ``tests/test_fault_checker.py`` feeds it hand-made histories
that break each invariant.

The invariants (see README.md):

``outcome``       every submitted saga reached its designed outcome: ``completed``,
                  or ``compensated`` when its target account is frozen; none lost (no
                  record), none stuck (not final by the settle deadline).
``conservation``  the sum of the balances equals the initial total.
``ledger``        each account's balance is its initial balance plus the effects
                  recorded against it (so no effect bypassed its effect key).
``exactly-once``  the effects a saga has match its outcome: debit + credit for a
                  completed saga; debit + refund (or nothing) for a compensated one;
                  each with the transfer's account and amount. ``twice``: no effect
                  was reported committed by two runs.
``stale``         no effect was committed by a stale run: an effect committed at
                  revision R with token t has R below the token (claim revision) of
                  every later run of the same step (the claim is shared by a step's
                  run and compensation, so a debit after the refund's claim counts).
``recorded``      at most one successful result recorded per step and kind (the engine's
                  own promise: execution may overlap, recorded results may not).
``roles``         after the faults heal every live worker is registered (one key
                  per live worker per region), a leader key exists, every role
                  process is alive, and none exited on its own (``crash``).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "COMMITTED",
    "EFFECT_STEP",
    "FINAL",
    "Attempt",
    "Effect",
    "History",
    "RoleExit",
    "RolesSnapshot",
    "RunResult",
    "Transfer",
    "Violation",
    "check",
    "check_conservation",
    "check_effects",
    "check_fencing",
    "check_ledger",
    "check_outcomes",
    "check_results",
    "check_roles",
    "expected_deltas",
    "parse_attempts",
    "summarize",
]

FINAL = frozenset({"completed", "compensated", "failed"})
EFFECT_STEP = {"debit": 0, "refund": 0, "credit": 1}
"""The step (index) whose claim fences each effect: the refund is debit's compensation."""
COMMITTED = "committed"
"""The JSONL event of an effect this run committed (see ledger_app)."""


@dataclass(frozen=True)
class Transfer:
    """One planned saga: move ``amount`` from ``source`` to ``target``."""

    saga_id: str
    saga: str
    source: str
    target: str
    amount: int
    expected: str
    """``completed``, or ``compensated`` when the target is frozen."""


@dataclass(frozen=True)
class Effect:
    """An effect key found in etcd (``<prefix>effects/<saga>/<name>``)."""

    saga_id: str
    name: str
    """``debit``, ``credit`` or ``refund``."""
    account: str
    delta: int
    token: int
    """The fence token of the run that committed it."""
    revision: int
    """The commit revision (the key's create revision: the txn's header revision)."""
    attempt: int = 0
    worker: str = ""
    pid: int = 0


@dataclass(frozen=True)
class Attempt:
    """One line a handler wrote (``start``, ``committed``, ``refused``, ``duplicate``...)."""

    saga_id: str
    name: str
    event: str
    token: int
    attempt: int = 0
    pid: int = 0
    worker: str = ""
    t: float = 0.0
    revision: int = 0
    """For ``committed``: the txn's header revision."""
    detail: str = ""


@dataclass(frozen=True)
class RunResult:
    """A run's recorded result in etcd (``run/<saga>/<step>/<kind>-<attempt>``)."""

    saga_id: str
    step: int
    kind: str
    attempt: int
    fence: int
    ok: bool


@dataclass(frozen=True)
class RoleExit:
    """A role process that exited without being killed by the nemesis."""

    role: str
    pid: int
    code: int | None
    at: float
    stderr: tuple[str, ...] = ()


@dataclass(frozen=True)
class RolesSnapshot:
    """The deployment as seen after the faults healed."""

    live_workers: Mapping[str, int]
    """Region -> worker processes running (not paused, not killed)."""
    registrations: Mapping[str, int]
    """Region -> registration keys ``<ns>/region/<region>/<lease hex>``."""
    leader: str | None
    """The leader key's value (the leading node), None when there is no leader key."""
    candidates: int | None = None
    """Keys under ``<ns>/leader/``: one per orchestrator campaigning or leading."""
    live_orchestrators: int | None = None
    """Orchestrator processes running (not paused, not killed)."""
    not_running: Sequence[str] = ()
    """Roles whose process is not running at the end."""
    unregistered: Sequence[str] = ()
    """Live roles with no key of their current process (a registration, or an election
    key, created after that process started): gone from the deployment."""
    exits: Sequence[RoleExit] = ()


@dataclass(frozen=True)
class Violation:
    """An invariant that does not hold, with the sagas involved."""

    invariant: str
    message: str
    saga_ids: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"[{self.invariant}] {self.message}"


@dataclass
class History:
    """Everything a run collected, in plain data."""

    transfers: list[Transfer]
    initial: dict[str, int]
    balances: dict[str, int]
    statuses: dict[str, str]
    """Saga id -> record status; ``pending`` when only the submission exists."""
    effects: list[Effect] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    results: list[RunResult] = field(default_factory=list)
    roles: RolesSnapshot | None = None


# -- invariants ---------------------------------------------------------------------------


def check_outcomes(transfers: Iterable[Transfer], statuses: Mapping[str, str]) -> list[Violation]:
    """Every saga reached its designed outcome: none lost, none stuck."""
    lost, stuck, wrong = [], [], []
    for t in transfers:
        status = statuses.get(t.saga_id)
        if status is None:
            lost.append(t.saga_id)
        elif status not in FINAL:
            stuck.append(f"{t.saga_id} ({status})")
        elif status != t.expected:
            wrong.append(f"{t.saga_id} ({status}, designed {t.expected})")
    out = []
    if lost:
        out.append(Violation("outcome", f"{len(lost)} saga(s) lost (no record, no submission): {_few(lost)}", tuple(lost)))
    if stuck:
        out.append(Violation("outcome", f"{len(stuck)} saga(s) stuck: {_few(stuck)}", _ids(stuck)))
    if wrong:
        out.append(Violation("outcome", f"{len(wrong)} saga(s) not at their designed outcome: {_few(wrong)}", _ids(wrong)))
    return out


def check_conservation(initial: Mapping[str, int], balances: Mapping[str, int]) -> list[Violation]:
    """The money is all there: the balances sum to the initial total, no account lost."""
    out = []
    missing = sorted(set(initial) - set(balances))
    if missing:
        out.append(Violation("conservation", f"account(s) gone: {_few(missing)}"))
    before, after = sum(initial.values()), sum(balances.values())
    if before != after:
        out.append(Violation("conservation", f"balances sum to {after}, the initial total was {before} ({after - before:+d})"))
    return out


def expected_deltas(transfer: Transfer) -> dict[str, tuple[str, int]]:
    """Effect name -> (account, delta) that effect must have for ``transfer``."""
    return {
        "debit": (transfer.source, -transfer.amount),
        "credit": (transfer.target, transfer.amount),
        "refund": (transfer.source, transfer.amount),
    }


def check_ledger(initial: Mapping[str, int], balances: Mapping[str, int], effects: Iterable[Effect]) -> list[Violation]:
    """Each balance is its initial balance plus the deltas of the effects against it."""
    want = dict(initial)
    for e in effects:
        want[e.account] = want.get(e.account, 0) + e.delta
    off = [f"{a}: {balances.get(a)} != {want[a]}" for a in sorted(want) if balances.get(a) != want[a]]
    if off:
        return [Violation("ledger", f"{len(off)} balance(s) disagree with their effects: {_few(off)}")]
    return []


def check_effects(
    transfers: Iterable[Transfer], statuses: Mapping[str, str], effects: Iterable[Effect], attempts: Iterable[Attempt]
) -> list[Violation]:
    """Effects applied exactly once where the outcome requires them, never twice."""
    out: list[Violation] = []
    by_saga: dict[str, dict[str, Effect]] = defaultdict(dict)
    for e in effects:
        by_saga[e.saga_id][e.name] = e
    plans = {t.saga_id: t for t in transfers}
    for sid in sorted(set(by_saga) - set(plans)):
        out.append(Violation("exactly-once", f"{sid}: effects {sorted(by_saga[sid])} of no planned saga", (sid,)))
    for sid, t in plans.items():
        have = set(by_saga.get(sid, {}))
        status = statuses.get(sid)
        if status == "completed":
            allowed = [{"debit", "credit"}]
        elif status == "compensated":
            allowed = [{"debit", "refund"}, set()]
        elif status in FINAL:  # failed: whatever happened, nothing may be applied twice
            allowed = [have]
        else:  # lost or stuck, reported by check_outcomes; its effects may be partial
            allowed = [have] if "credit" not in have or "refund" not in have else []
        if have not in allowed:
            want = " or ".join("+".join(sorted(a)) or "nothing" for a in allowed) or "not both credit and refund"
            out.append(Violation(
                "exactly-once", f"{sid} ({status}) has effects {'+'.join(sorted(have)) or 'none'}, expected {want}", (sid,)
            ))
        want_deltas = expected_deltas(t)
        for name, e in sorted(by_saga.get(sid, {}).items()):
            if (e.account, e.delta) != want_deltas.get(name):
                out.append(Violation(
                    "exactly-once", f"{sid}: {name} moved {e.delta:+d} on {e.account}, expected {want_deltas.get(name)}", (sid,)
                ))
    commits: dict[tuple[str, str], list[Attempt]] = defaultdict(list)
    for a in attempts:
        if a.event == COMMITTED:
            commits[(a.saga_id, a.name)].append(a)
    for (sid, name), lines in sorted(commits.items()):
        if len(lines) > 1:
            runs = ", ".join(f"token {a.token} attempt {a.attempt} pid {a.pid} rev {a.revision}" for a in lines)
            out.append(Violation("twice", f"{sid}: {name} reported committed {len(lines)} times ({runs})", (sid,)))
        effect = by_saga.get(sid, {}).get(name)
        for a in lines:
            if effect is None:
                out.append(Violation("twice", f"{sid}: {name} reported committed (token {a.token}) but no effect key exists", (sid,)))
            elif (a.token, a.revision) != (effect.token, effect.revision):
                out.append(Violation(
                    "twice", f"{sid}: {name} reported committed by token {a.token} at rev {a.revision}, "
                    f"but its effect key holds token {effect.token} at rev {effect.revision}", (sid,),
                ))
    return out


def check_fencing(effects: Iterable[Effect], attempts: Iterable[Attempt], results: Iterable[RunResult]) -> list[Violation]:
    """No effect committed by a stale run: each committed before every later run's claim."""
    tokens: dict[tuple[str, int], set[int]] = defaultdict(set)
    for a in attempts:
        if a.token and a.name in EFFECT_STEP:
            tokens[(a.saga_id, EFFECT_STEP[a.name])].add(a.token)
    for r in results:
        if r.fence:
            tokens[(r.saga_id, r.step)].add(r.fence)
    committed = [(e.saga_id, e.name, e.token, e.revision, "effect key") for e in effects]
    committed += [(a.saga_id, a.name, a.token, a.revision, f"pid {a.pid}") for a in attempts if a.event == COMMITTED and a.revision]
    out, seen = [], set()
    for sid, name, token, revision, where in committed:
        step = EFFECT_STEP.get(name)
        if step is None:
            continue
        known = tokens.get((sid, step), set())
        later = sorted(t for t in known if token < t <= revision)
        key = (sid, name, token, revision)
        if later and key not in seen:
            seen.add(key)
            out.append(Violation(
                "stale", f"{sid}: {name} committed at rev {revision} by token {token} ({where}), "
                f"after later run(s) of step {step} had claimed it: tokens {later}", (sid,),
            ))
        if token not in known and key not in seen:
            seen.add(key)
            out.append(Violation("stale", f"{sid}: {name} committed by token {token}, a run no handler or result reports", (sid,)))
    return out


def check_results(results: Iterable[RunResult]) -> list[Violation]:
    """At most one successful result recorded per saga step and kind."""
    ok: dict[tuple[str, int, str], list[RunResult]] = defaultdict(list)
    for r in results:
        if r.ok:
            ok[(r.saga_id, r.step, r.kind)].append(r)
    return [
        Violation("recorded", f"{sid}: step {step} {kind} has {len(rs)} successful results recorded "
                  f"({', '.join(f'attempt {r.attempt} fence {r.fence}' for r in rs)})", (sid,))
        for (sid, step, kind), rs in sorted(ok.items()) if len(rs) > 1
    ]


def check_roles(snapshot: RolesSnapshot) -> list[Violation]:
    """Every role back in the deployment, every role process alive, none exited by itself."""
    out = []
    for region in sorted(set(snapshot.live_workers) | set(snapshot.registrations)):
        live, keys = snapshot.live_workers.get(region, 0), snapshot.registrations.get(region, 0)
        if live != keys:
            out.append(Violation("roles", f"region {region}: {keys} registration key(s) for {live} live worker(s)"))
    if snapshot.leader is None:
        out.append(Violation("roles", "no orchestrator leads (no leader key)"))
    if snapshot.candidates is not None and snapshot.live_orchestrators is not None \
            and snapshot.candidates != snapshot.live_orchestrators:
        out.append(Violation(
            "roles", f"{snapshot.candidates} election key(s) for {snapshot.live_orchestrators} live orchestrator(s) "
            "(each campaigns or leads)",
        ))
    if snapshot.unregistered:
        out.append(Violation("roles", f"live role(s) with no key of their own (not registered / not campaigning): "
                                      f"{', '.join(snapshot.unregistered)}"))
    if snapshot.not_running:
        out.append(Violation("roles", f"role process(es) not running: {', '.join(snapshot.not_running)}"))
    for ex in snapshot.exits:
        tail = "\n".join(f"      {line}" for line in ex.stderr[-15:]) or "      (no stderr)"
        out.append(Violation("crash", f"{ex.role} (pid {ex.pid}) exited by itself with status {ex.code}; stderr tail:\n{tail}"))
    return out


def check(history: History) -> list[Violation]:
    """Every invariant over ``history``."""
    out = check_outcomes(history.transfers, history.statuses)
    out += check_conservation(history.initial, history.balances)
    out += check_ledger(history.initial, history.balances, history.effects)
    out += check_effects(history.transfers, history.statuses, history.effects, history.attempts)
    out += check_fencing(history.effects, history.attempts, history.results)
    out += check_results(history.results)
    if history.roles is not None:
        out += check_roles(history.roles)
    return out


# -- parsing the handlers' lines ----------------------------------------------------------


def parse_attempts(lines: Iterable[str]) -> list[Attempt]:
    """`Attempt` records from JSONL lines; a torn last line (its writer was killed) and
    lines of other shapes are skipped."""
    out = []
    for line in lines:
        try:
            raw: Any = json.loads(line)
            out.append(Attempt(
                saga_id=str(raw["saga_id"]), name=str(raw["name"]), event=str(raw["event"]), token=int(raw["token"]),
                attempt=int(raw.get("attempt", 0)), pid=int(raw.get("pid", 0)), worker=str(raw.get("worker", "")),
                t=float(raw.get("t", 0.0)), revision=int(raw.get("revision") or 0), detail=str(raw.get("detail", "")),
            ))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def summarize(history: History) -> dict[str, int]:
    """Counts for the run's summary line: outcomes and handler events."""
    counts: Counter[str] = Counter()
    for t in history.transfers:
        counts[f"saga {history.statuses.get(t.saga_id, 'lost')}"] += 1
    for a in history.attempts:
        counts[f"effect {a.event}"] += 1
    return dict(sorted(counts.items()))


def _ids(items: Sequence[str]) -> tuple[str, ...]:
    return tuple(i.split(" ", 1)[0] for i in items)


def _few(items: Sequence[str], n: int = 8) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" ... (+{len(items) - n})" if len(items) > n else "")
