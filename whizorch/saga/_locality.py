"""Leader locality: put etcd's Raft leader in the orchestrator leader's region.

Every write the orchestrator leader makes (a saga transition, a dispatch, a fenced txn)
is a quorum commit at etcd's Raft leader: the request travels from the orchestrator to
its own etcd member, on to the Raft leader, which appends it, replicates it to a quorum
and answers back the same way. When the Raft leader sits in another region, every such
write pays that region's round trip on top of the quorum's: with the demo's matrix an
orchestrator in eu writes in about RTT(eu, ap) + RTT(ap, us) = 200 + 150 = 350 ms with
etcd's leader in ap, and in RTT(eu, us) = 80 ms with it in eu. Which member leads is
Raft's business (whoever won the last election), so the orchestrator asks etcd to hand
leadership to its own region's member (Maintenance ``MoveLeader``) when it starts to lead.

`bring_raft_leader` is safe to call again and again: when a home member already leads
it costs one status call to a home member (inside the region) and changes nothing. It
never raises on etcd trouble: it logs, and the `LocalityResult` says what happened. It
moves leadership only to a home member that is healthy (answers, reports no errors,
follows the current leader in its term) and caught up (its committed Raft index within
``max_lag`` entries of the leader's): a member that is behind would make Raft wait for
it to catch up before handing over, and proposals are held while a transfer runs.

A move is an election: Raft drops what is proposed while leadership is in transit, and
the writer waits etcd's request timeout (5 s + 2 x the election timeout) for an
``OutcomeUnknownError``. Call it when the orchestrator starts to lead, before it writes,
not on a timer.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Sequence

import attrs

from whizorch._check import is_int, is_number
from whizorch.errors import ConfigError, WhizorchError
from whizorch.etcd import EtcdClient, Status, parse_endpoints

__all__ = [
    "MAX_RAFT_LAG",
    "Choice",
    "LocalityOutcome",
    "LocalityResult",
    "bring_raft_leader",
    "choose_target",
]

log = logging.getLogger("whizorch.saga.locality")

MAX_RAFT_LAG = 1000
"""How far (Raft log entries) a home member's committed index may trail the leader's for
it to count as caught up. The two indexes are read a WAN round trip apart, so a busy
cluster shows a lag of a few hundred entries for a member that is in step; a member
that really is behind (restarted, receiving a snapshot) trails by far more."""


class LocalityOutcome(enum.Enum):
    """What `bring_raft_leader` found and did."""

    HOME = "home"
    """A home member already leads: nothing was done."""
    MOVED = "moved"
    """Leadership was moved to a home member, which leads now."""
    NO_CANDIDATE = "no_candidate"
    """No home member is healthy and caught up (or none is configured): left as it is."""
    FAILED = "failed"
    """etcd trouble: no leader, a member unreachable, the move refused or too slow."""


@attrs.frozen
class LocalityResult:
    """What one call of `bring_raft_leader` found and did."""

    outcome: LocalityOutcome
    """See `LocalityOutcome`."""
    leader_before: int | None
    """The member id leading when the call began (None: not learned)."""
    leader_after: int | None
    """The member id leading when the call ended (None: not learned)."""
    target: int | None
    """The home member chosen to lead (None when no move was tried)."""
    took_s: float
    """Seconds the call took."""
    reason: str
    """One line for logs and status pages."""

    @property
    def moved(self) -> bool:
        """True when this call moved leadership to a home member."""
        return self.outcome is LocalityOutcome.MOVED

    @property
    def home_leads(self) -> bool:
        """True when a home member leads at the end of the call."""
        return self.outcome in (LocalityOutcome.HOME, LocalityOutcome.MOVED)


@attrs.frozen
class Choice:
    """The home member to hand leadership to, or None with the reason why none."""

    target: Status | None
    reason: str


def choose_target(
    leader: Status, home: Sequence[Status | WhizorchError], *, max_lag: int = MAX_RAFT_LAG
) -> Choice:
    """Pick the home member to lead: healthy, following ``leader`` in its term, caught
    up within ``max_lag`` entries; the most caught up first, then the order of ``home``
    (a region's list names its preferred member first). ``home`` holds each home
    endpoint's status, or the error asking for it raised. Pure: no IO."""
    eligible: list[Status] = []
    refused: list[str] = []
    for entry in home:
        if isinstance(entry, WhizorchError):
            refused.append(f"unreachable ({entry.message})")
            continue
        who = f"{entry.member_id:x} at {entry.endpoint}"
        lag = leader.raft_index - entry.raft_index
        if entry.member_id == leader.member_id:
            return Choice(entry, f"{who} leads already")
        if entry.errors:
            refused.append(f"{who} reports errors: {'; '.join(entry.errors)}")
        elif entry.leader != leader.member_id or entry.raft_term != leader.raft_term:
            refused.append(
                f"{who} does not follow the leader {leader.member_id:x} in term {leader.raft_term} "
                f"(it names {entry.leader:x} in term {entry.raft_term})"
            )
        elif lag > max_lag:
            refused.append(f"{who} is {lag} entries behind the leader (at most {max_lag})")
        else:
            eligible.append(entry)
    if not eligible:
        return Choice(None, "no home member can lead: " + ("; ".join(refused) or "none configured"))
    best = _first_most_caught_up(eligible, max_lag)
    return Choice(best, f"{best.member_id:x} at {best.endpoint} is healthy and caught up")


def _first_most_caught_up(eligible: Sequence[Status], max_lag: int) -> Status:
    """The first in list order among the most caught up (within a tenth of the margin:
    indexes read a moment apart differ by a few entries without meaning anything)."""
    top = max(s.raft_index for s in eligible)
    close = max(1, max_lag // 10)
    return next(s for s in eligible if top - s.raft_index < close)


async def bring_raft_leader(
    client: EtcdClient,
    home_endpoints: Sequence[str],
    *,
    timeout_s: float,
    max_lag: int = MAX_RAFT_LAG,
) -> LocalityResult:
    """Make a member in ``home_endpoints`` etcd's Raft leader, if one is fit to lead.

    ``home_endpoints``: the client endpoints of the caller's own region's members (the
    ``[regions.<name>] endpoints`` of the config), as the caller reaches them.
    ``timeout_s`` bounds the whole call (a move takes about a round trip between the two
    members plus one to a quorum). Never raises on etcd trouble; raises
    :class:`ConfigError` only for bad arguments. See the module docstring for why.
    """
    if not is_number(timeout_s, above=0, finite=False):
        raise ConfigError(
            "timeout_s must be a positive number of seconds", field="timeout_s", value=timeout_s
        )
    if not is_int(max_lag, minimum=0):
        raise ConfigError(
            "max_lag must be a whole number of entries >= 0", field="max_lag", value=max_lag
        )
    started = time.perf_counter()
    if not home_endpoints:
        return _result(LocalityOutcome.NO_CANDIDATE, started, "no home endpoints configured")
    home = parse_endpoints(home_endpoints)
    progress = _Progress()
    try:
        async with asyncio.timeout(timeout_s):
            result = await _bring(client, home, max_lag, started + timeout_s, started, progress)
    except TimeoutError:
        result = progress.failed(started, f"not done within {timeout_s:g}s")
    except WhizorchError as exc:
        result = progress.failed(started, f"{type(exc).__name__}: {exc}")
    _log(result)
    return result


@attrs.define
class _Progress:
    """What the call has learned so far, for a failure's report."""

    leader_before: int | None = None
    target: int | None = None

    def failed(self, started: float, reason: str) -> LocalityResult:
        return _result(
            LocalityOutcome.FAILED, started, reason, before=self.leader_before, target=self.target
        )


async def _bring(
    client: EtcdClient,
    home: Sequence[str],
    max_lag: int,
    deadline: float,
    started: float,
    progress: _Progress,
) -> LocalityResult:
    def left() -> float:
        # each call's own deadline ends with the whole call's (a MoveLeader's deadline is
        # also how long etcd waits for the transfer)
        return max(0.001, deadline - time.perf_counter())

    # the cheap path: a home member that leads says so itself (a call inside the region)
    statuses = await _home_statuses(client, home, left())
    for s in statuses:
        if isinstance(s, Status) and s.leader == s.member_id and not s.errors:
            return _result(
                LocalityOutcome.HOME,
                started,
                f"{s.member_id:x} at {s.endpoint} leads",
                before=s.member_id,
                after=s.member_id,
            )
    leader = await client.leader_status(timeout_s=left())
    progress.leader_before = leader.member_id
    # read the home members again now: their indexes and the leader's a round trip apart at most
    statuses = await _home_statuses(client, home, left())
    choice = choose_target(leader, statuses, max_lag=max_lag)
    if choice.target is None:
        return _result(
            LocalityOutcome.NO_CANDIDATE,
            started,
            choice.reason,
            before=leader.member_id,
            after=leader.member_id,
        )
    target = choice.target
    if target.member_id == leader.member_id:
        return _result(
            LocalityOutcome.HOME,
            started,
            choice.reason,
            before=leader.member_id,
            after=leader.member_id,
        )
    progress.target = target.member_id
    await client.move_leader(target.member_id, timeout_s=left())
    # move_leader returns once the old leader sees the target lead; ask the target itself
    after = await client.status(target.endpoint, timeout_s=left())
    if after.leader != target.member_id:
        return _result(
            LocalityOutcome.FAILED,
            started,
            f"moved to {target.member_id:x}, but {after.leader:x} leads now",
            before=leader.member_id,
            after=after.leader or None,
            target=target.member_id,
        )
    return _result(
        LocalityOutcome.MOVED,
        started,
        f"moved from {leader.member_id:x} to {target.member_id:x} at {target.endpoint}",
        before=leader.member_id,
        after=target.member_id,
        target=target.member_id,
    )


async def _home_statuses(
    client: EtcdClient, home: Sequence[str], timeout_s: float
) -> list[Status | WhizorchError]:
    async def one(endpoint: str) -> Status | WhizorchError:
        try:
            return await client.status(endpoint, timeout_s=timeout_s)
        except WhizorchError as exc:
            return exc

    return list(await asyncio.gather(*(one(e) for e in home)))


def _result(
    outcome: LocalityOutcome,
    started: float,
    reason: str,
    *,
    before: int | None = None,
    after: int | None = None,
    target: int | None = None,
) -> LocalityResult:
    return LocalityResult(
        outcome=outcome,
        leader_before=before,
        leader_after=after,
        target=target,
        took_s=time.perf_counter() - started,
        reason=reason,
    )


def _log(result: LocalityResult) -> None:
    took_ms = result.took_s * 1000
    if result.outcome is LocalityOutcome.MOVED:
        log.info("etcd's Raft leader brought home in %.0f ms: %s", took_ms, result.reason)
    elif result.outcome is LocalityOutcome.HOME:
        log.debug("etcd's Raft leader is home: %s", result.reason)
    else:
        log.warning(
            "etcd's Raft leader left where it is (%s, %.0f ms): %s",
            result.outcome.value,
            took_ms,
            result.reason,
        )
