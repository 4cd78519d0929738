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
``terms``         from etcd's history: every saga record write carrying ``leader_term``
                  T is made while the election key created at revision T exists and
                  leads (no key with a lower create revision in its election), and
                  that key is in the election of the saga's shard: no write of a term
                  after its key was deleted, none by a queued candidate, none by
                  another shard's leader; per shard, no older term writes after a newer
                  one did (no two leaders of a shard write in overlapping terms).
``roles``         after the faults heal every live worker is registered (one key
                  per live worker per region), every live orchestrator has its
                  membership key (``<ns>/orch/``) made by its current process, every
                  shard has a leader and it is a live orchestrator's current session,
                  every role process is alive, and none exited on its own (``crash``);
                  once settled (a convergence property, given a generous deadline)
                  each shard's election holds only its leader and each live
                  orchestrator leads N//M or N//M+1 of the N shards.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "COMMITTED",
    "EFFECT_STEP",
    "FINAL",
    "Attempt",
    "Effect",
    "History",
    "KeyEvent",
    "RecordWrite",
    "RoleExit",
    "RolesSnapshot",
    "RunResult",
    "ShardLead",
    "Term",
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
    "check_shares",
    "check_terms",
    "expected_deltas",
    "parse_attempts",
    "parse_history",
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
class ShardLead:
    """One shard's election as read: its leader (the key with the lowest create
    revision under ``<ns>/leader/<shard>/``) and how many keys the election holds."""

    lease: str
    """The leader key's lease (hex): the session of the process that leads."""
    node: str
    """The leader key's value: the leading node's id (the role's name)."""
    keys: int = 1
    """Keys in the election: the leader and any candidates queued behind it."""
    queued: tuple[str, ...] = ()
    """The candidates queued behind the leader, as ``node (lease hex)``."""


@dataclass(frozen=True)
class RolesSnapshot:
    """The deployment as seen after the faults healed."""

    live_workers: Mapping[str, int]
    """Region -> worker processes running (not paused, not killed)."""
    registrations: Mapping[str, int]
    """Region -> registration keys ``<ns>/region/<region>/<lease hex>``."""
    shards: int = 0
    """The namespace's shard count (0: unknown; the shard checks are skipped)."""
    leaders: Mapping[int, ShardLead] = field(default_factory=dict)
    """Shard -> its election, for the shards whose election holds a key."""
    live_orchestrators: Sequence[str] = ()
    """Orchestrator roles whose process is running (not paused, not killed)."""
    sessions: Mapping[str, str] = field(default_factory=dict)
    """Live orchestrator -> the lease (hex) of the membership key ``<ns>/orch/<lease>``
    its current process made (absent: it has none)."""
    members: int | None = None
    """Membership keys under ``<ns>/orch/``: one per live orchestrator."""
    not_running: Sequence[str] = ()
    """Roles whose process is not running at the end."""
    unregistered: Sequence[str] = ()
    """Live roles with no key of their current process (a registration, or a
    membership key, created after that process started): gone from the deployment."""
    exits: Sequence[RoleExit] = ()


@dataclass(frozen=True)
class KeyEvent:
    """One change from etcd's history (a watch event), as plain data."""

    kind: str
    """``put`` or ``delete``."""
    key: str
    revision: int
    """The revision that made the change."""
    create_revision: int = 0
    """A put's key's create revision; a delete's deleted key's (0: not known)."""
    value: bytes = b""


@dataclass(frozen=True)
class Term:
    """One term of one shard: an election key ``<ns>/leader/<shard>/<lease hex>`` from
    its creation (``term``, the fencing token) to its deletion (``ended``)."""

    shard: int
    term: int
    lease: str
    node: str
    ended: int | None = None
    """The revision that deleted the key (None: not deleted within the history)."""


@dataclass(frozen=True)
class RecordWrite:
    """A put of a saga record (``<ns>/saga/<id>``) in etcd's history."""

    saga_id: str
    shard: int
    """The saga's shard (the engine's own mapping of saga ids to shards)."""
    revision: int
    term: int
    """The record's ``leader_term`` (0: it carries none, or does not parse)."""


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
    """The deployment once every role was back (or the deadline passed)."""
    settled: RolesSnapshot | None = None
    """The deployment once the shares settled (or the generous deadline passed)."""
    terms: list[Term] | None = None
    """The shards' terms from etcd's history (None: not read; the terms check is skipped)."""
    writes: list[RecordWrite] = field(default_factory=list)
    """Every saga record write in etcd's history, in revision order."""


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
    """Every role back in the deployment (registered, every shard led by a live
    orchestrator), every role process alive, none exited by itself."""
    out = []
    for region in sorted(set(snapshot.live_workers) | set(snapshot.registrations)):
        live, keys = snapshot.live_workers.get(region, 0), snapshot.registrations.get(region, 0)
        if live != keys:
            out.append(Violation("roles", f"region {region}: {keys} registration key(s) for {live} live worker(s)"))
    if snapshot.shards:
        leaderless = [str(k) for k in range(snapshot.shards) if k not in snapshot.leaders]
        if leaderless:
            out.append(Violation("roles", f"shard(s) with no leader (no key in their election): {', '.join(leaderless)}"))
        current = set(snapshot.sessions.values())
        stray = [f"{k} ({lead.node}, lease {lead.lease})" for k, lead in sorted(snapshot.leaders.items())
                 if lead.lease not in current]  # fmt: skip
        if stray:
            out.append(Violation("roles", f"shard(s) led by no live orchestrator's current session: {_few(stray)}"))
    if snapshot.members is not None and snapshot.members != len(snapshot.live_orchestrators):
        out.append(Violation(
            "roles", f"{snapshot.members} membership key(s) for {len(snapshot.live_orchestrators)} live orchestrator(s)",
        ))
    if snapshot.unregistered:
        out.append(Violation("roles", f"live role(s) with no key of their own (not registered / not a member): "
                                      f"{', '.join(snapshot.unregistered)}"))
    if snapshot.not_running:
        out.append(Violation("roles", f"role process(es) not running: {', '.join(snapshot.not_running)}"))
    for ex in snapshot.exits:
        tail = "\n".join(f"      {line}" for line in ex.stderr[-15:]) or "      (no stderr)"
        out.append(Violation("crash", f"{ex.role} (pid {ex.pid}) exited by itself with status {ex.code}; stderr tail:\n{tail}"))
    return out


def check_shares(snapshot: RolesSnapshot) -> list[Violation]:
    """Once settled: each shard's election holds only its leader (only the orchestrator
    a shard is assigned to campaigns for it), and the live orchestrators share the
    shards evenly (N//M or N//M+1 each)."""
    out: list[Violation] = []
    if not snapshot.shards:
        return out
    queued = [f"{k} ({lead.keys} keys" + (f": {', '.join(lead.queued)} behind {lead.node} (lease {lead.lease})" if lead.queued else "")
              + ")" for k, lead in sorted(snapshot.leaders.items()) if lead.keys > 1]
    if queued:
        out.append(Violation("roles", f"once settled, shard(s) with candidates queued behind their leader: {_few(queued)}"))
    live = sorted(snapshot.live_orchestrators)
    if live:
        n = snapshot.shards
        low, high = n // len(live), -(-n // len(live))
        led = Counter(lead.lease for lead in snapshot.leaders.values())
        counts = {name: led.get(snapshot.sessions[name], 0) if name in snapshot.sessions else 0 for name in live}
        if any(not low <= c <= high for c in counts.values()):
            shares = ", ".join(f"{name} {c}" for name, c in counts.items())
            want = f"{low}" if low == high else f"{low} or {high}"
            out.append(Violation("roles", f"once settled, uneven shares of the {n} shards: {shares} "
                                          f"(each of {len(live)} live orchestrator(s) should lead {want})"))
    return out


def check_terms(terms: Iterable[Term], writes: Iterable[RecordWrite]) -> list[Violation]:
    """Every saga record write is made by the leader of the saga's shard in the term it
    carries: that term's election key exists and leads its election at the write's
    revision, and the election is the saga's shard's; per shard, the terms that write
    never go back (no two leaders of a shard write in overlapping terms)."""
    by_term = {t.term: t for t in terms}
    by_shard: dict[int, list[Term]] = defaultdict(list)
    for u in by_term.values():
        by_shard[u.shard].append(u)
    unknown: list[str] = []
    foreign: list[str] = []
    outside: list[str] = []
    queued: list[str] = []
    back: list[str] = []
    newest: dict[int, tuple[int, int]] = {}  # shard -> (newest term that wrote, its revision)
    for w in sorted(writes, key=lambda w: w.revision):
        at = f"{w.saga_id} at rev {w.revision} by term {w.term}"
        t = by_term.get(w.term)
        if t is None:
            unknown.append(at)
            continue
        if t.shard != w.shard:
            foreign.append(f"{at} ({t.node}, shard {t.shard}'s leader; the saga is in shard {w.shard})")
            continue
        seen = newest.get(w.shard)
        if seen is not None and w.term < seen[0]:
            back.append(f"{at} ({t.node}, shard {w.shard}; term {seen[0]} wrote at rev {seen[1]})")
        if seen is None or w.term > seen[0]:
            newest[w.shard] = (w.term, w.revision)
        if not (t.term < w.revision and (t.ended is None or w.revision < t.ended)):
            outside.append(f"{at} ({t.node}, shard {t.shard}; key created at rev {t.term}, deleted at rev {t.ended})")
            continue
        ahead = [u for u in by_shard[t.shard] if u.term < t.term and (u.ended is None or u.ended > w.revision)]
        if ahead:
            first = min(ahead, key=lambda u: u.term)
            queued.append(f"{at} ({t.node}, shard {t.shard}; term {first.term} of {first.node} still led it)")
    out = []
    for found, what in (
        (unknown, "by a term that is no election key's create revision"),
        (foreign, "by the leader of another shard than the saga's"),
        (outside, "outside their term (its election key did not exist at that revision)"),
        (queued, "by a candidate queued behind the shard's leader (a key with a lower create revision existed)"),
        (back, "by an older term after a newer term of the shard had written (overlapping terms)"),
    ):
        if found:
            out.append(Violation("terms", f"{len(found)} saga record write(s) {what}: {_few(found)}", _ids(found)))
    return out


def check(history: History) -> list[Violation]:
    """Every invariant over ``history``."""
    out = check_outcomes(history.transfers, history.statuses)
    out += check_conservation(history.initial, history.balances)
    out += check_ledger(history.initial, history.balances, history.effects)
    out += check_effects(history.transfers, history.statuses, history.effects, history.attempts)
    out += check_fencing(history.effects, history.attempts, history.results)
    out += check_results(history.results)
    if history.terms is not None:
        out += check_terms(history.terms, history.writes)
    if history.roles is not None:
        out += check_roles(history.roles)
    if history.settled is not None:
        out += check_shares(history.settled)
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


def parse_history(
    events: Iterable[KeyEvent], namespace: str, shard_of: Callable[[str], int]
) -> tuple[list[Term], list[RecordWrite]]:
    """The shards' terms (from the changes of ``<ns>/leader/<shard>/<lease hex>``) and the
    saga record writes (puts of ``<ns>/saga/<id>``, each with its ``leader_term`` and its
    shard by ``shard_of``), from etcd's history in revision order. Other keys are
    ignored. A session that resigns and campaigns again re-creates the same key: each
    creation is a term of its own."""
    leaders, sagas = f"{namespace}/leader/", f"{namespace}/saga/"
    terms: dict[int, Term] = {}
    open_: dict[str, int] = {}  # election key -> the term (create revision) it holds now
    writes: list[RecordWrite] = []
    for ev in events:
        if ev.key.startswith(leaders):
            shard, _, lease = ev.key[len(leaders) :].partition("/")
            if not shard.isdigit() or not lease or "/" in lease:
                continue  # not a shard's election key
            if ev.kind == "delete":
                held = open_.pop(ev.key, None)
                if held is not None and held in terms:
                    terms[held] = dataclasses.replace(terms[held], ended=ev.revision)
                continue
            created = ev.create_revision or ev.revision
            node = ev.value.decode(errors="replace")
            if open_.get(ev.key) != created:  # a creation (or the first sight of a key older than the history)
                open_[ev.key] = created
                terms[created] = Term(int(shard), created, lease, node)
            else:  # a proclamation: the same term, a new value
                terms[created] = dataclasses.replace(terms[created], node=node)
        elif ev.key.startswith(sagas) and ev.kind == "put":
            sid = ev.key[len(sagas) :]
            try:
                term = int(json.loads(ev.value).get("leader_term") or 0)
            except (ValueError, TypeError, AttributeError):
                term = 0
            writes.append(RecordWrite(sid, shard_of(sid), ev.revision, term))
    return sorted(terms.values(), key=lambda t: t.term), writes


def summarize(history: History) -> dict[str, int]:
    """Counts for the run's summary line: outcomes, handler events, and the terms and
    record writes the terms check read from etcd's history."""
    counts: Counter[str] = Counter()
    for t in history.transfers:
        counts[f"saga {history.statuses.get(t.saga_id, 'lost')}"] += 1
    for a in history.attempts:
        counts[f"effect {a.event}"] += 1
    if history.terms is not None:
        counts["shard terms"] = len(history.terms)
        counts["record writes"] = len(history.writes)
    return dict(sorted(counts.items()))


def _ids(items: Sequence[str]) -> tuple[str, ...]:
    return tuple(i.split(" ", 1)[0] for i in items)


def _few(items: Sequence[str], n: int = 8) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" ... (+{len(items) - n})" if len(items) > n else "")
