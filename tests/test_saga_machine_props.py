"""Property tests of the pure saga state machine: generated event interleavings (hypothesis).

A ``RuleBasedStateMachine`` adopts one saga and feeds the machine what the orchestrator
would: worker results (current, superseded, duplicated, misdirected), lost claims,
cancels, region changes and the timers the machine itself armed, on a clock the rules
advance. The "outside world" is the task keys the transitions put and delete, so
results come mostly from runs that are really dispatched. After every step the
invariants below check what docs/sagas.md and the machine promise.

Two interleavings the random search rarely reaches (a success landing while a retry waits
for a region) are replayed by hand at the end, through the same rules and invariants.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from whizorch.saga import RegionInfo, Retry, Router, Saga, Settings
from whizorch.saga._keys import Keys
from whizorch.saga._machine import (
    COMPENSATE,
    RUN,
    Cancel,
    ClaimLost,
    Event,
    RegionsChanged,
    Result,
    Timer,
    Transition,
    adopt,
    apply,
)
from whizorch.saga._model import (
    COMPENSATED,
    COMPENSATING,
    COMPLETED,
    FAILED,
    MAX_HISTORY,
    RUNNING,
    STATUSES,
    SagaRecord,
    StepState,
)

T0 = 1_000.0
SID = "p-1"
KEYS = Keys()
TAGS = {"eu": frozenset({"gdpr"}), "us": frozenset(), "ap": frozenset({"gdpr"})}
REGIONS = sorted(TAGS)
# all up, one down, one up, none up: sagas get somewhere, and sometimes nowhere
HEALTHY = st.sampled_from(
    [frozenset(REGIONS), *(frozenset(REGIONS) - {r} for r in REGIONS), *(frozenset({r}) for r in REGIONS), frozenset()]
)
LATENCY = {"eu": {"us": 80, "ap": 120}, "us": {"ap": 150}}

# pending -> dispatched -> done -> compensating -> compensated, where one event may take
# several of these steps at once (a success after a cancel: dispatched -> compensating);
# the ends never move again
LIFECYCLE = {
    "pending": {"pending", "dispatched", "failed", "skipped"},
    "dispatched": {"dispatched", "done", "failed", "compensating", "compensated", "comp_failed"},
    "done": {"done", "compensating", "compensated", "comp_failed"},
    "compensating": {"compensating", "compensated", "comp_failed"},
    "failed": {"failed"},
    "skipped": {"skipped"},
    "compensated": {"compensated"},
    "comp_failed": {"comp_failed"},
}
ACTIVE = ("dispatched", "compensating")
CHECKS: list[str] = []
"""Names of the model's invariants, so that a replayed interleaving checks the same ones."""


def check(fn: Callable[[SagaMachineModel], None]) -> Callable[[SagaMachineModel], None]:
    """``@invariant()``, and registered in CHECKS."""
    CHECKS.append(fn.__name__)
    return invariant()(fn)


async def _handler(ctx: Any, value: Any) -> None:
    return None


def _retry(attempts: int, backoff_s: float = 1.0) -> Retry:
    return Retry(attempts=attempts, backoff_s=backoff_s, multiplier=2.0, jitter=False)


def _pay() -> Saga:
    """3 steps: a retried, compensated step at home in eu; one with no retry, no
    compensation and no deadline; a gdpr-only step with its own compensation timeout."""
    saga = Saga("pay", max_failovers=1)
    debit = saga.step(name="debit", retry=_retry(3), timeout_s=10.0, region="eu")(_handler)
    debit.compensate(retry=_retry(2))(_handler)
    saga.step(name="notify", retry=_retry(1), timeout_s=None)(_handler)
    credit = saga.step(name="credit", retry=_retry(2, 2.0), timeout_s=5.0, compliance={"gdpr"})(_handler)
    credit.compensate(retry=_retry(3), timeout_s=3.0)(_handler)
    return saga


def _ship() -> Saga:
    """2 compensated steps, the second gdpr-only; no failover allowed."""
    saga = Saga("ship", max_failovers=0)
    pack = saga.step(name="pack", retry=_retry(2), timeout_s=4.0, region="us")(_handler)
    pack.compensate(retry=_retry(1))(_handler)
    send = saga.step(name="send", retry=_retry(3, 0.5), timeout_s=4.0, region="eu", compliance={"gdpr"})(_handler)
    send.compensate(retry=_retry(2), timeout_s=2.0)(_handler)
    return saga


def _book() -> Saga:
    """4 steps, every one compensated and retried; up to 3 failovers."""
    saga = Saga("book", max_failovers=3)
    for i in range(4):
        step = saga.step(name=f"b{i}", retry=_retry(2 + i % 2), timeout_s=6.0)(_handler)
        step.compensate(retry=_retry(2), timeout_s=None if i == 1 else 4.0)(_handler)
    return saga


def _plain() -> Saga:
    """2 steps and nothing to undo (no compensations)."""
    saga = Saga("plain", max_failovers=2)
    saga.step(name="p0", retry=_retry(2), timeout_s=3.0)(_handler)
    saga.step(name="p1", retry=_retry(1), timeout_s=3.0, compliance={"gdpr"})(_handler)
    return saga


Case = tuple[Callable[[], Saga], Settings]
BASE = Settings(dispatch_grace_s=2.0, no_region_timeout_s=30.0)
CASES: list[Case] = [
    (_pay, BASE),
    (_ship, BASE),
    (_book, BASE),
    (_book, Settings(dispatch_grace_s=1.0, no_region_timeout_s=12.0, max_failovers=1)),
    (_plain, BASE),
]


def _current(st_: StepState, kind: str) -> int:
    return st_.run if kind == RUN else st_.comp_run


def _stale(ev: Event, before: SagaRecord) -> bool:
    """A failure-like event (failed result, lost claim, timer) for an attempt older than the step's."""
    if not isinstance(ev, (ClaimLost, Timer, Result)) or (isinstance(ev, Result) and ev.ok):
        return False
    if ev.kind not in (RUN, COMPENSATE) or not 0 <= ev.step < len(before.steps):
        return False
    return ev.attempt < _current(before.steps[ev.step], ev.kind)


def _misdirected(ev: Event, before: SagaRecord) -> bool:
    """A result of a kind the step is not running now (a run result after the run ended...)."""
    if not isinstance(ev, Result) or not 0 <= ev.step < len(before.steps):
        return False
    wanted = "dispatched" if ev.kind == RUN else "compensating"
    return before.steps[ev.step].state != wanted


def _early(ev: Event, before: SagaRecord, now: float) -> bool:
    """A retry timer fired before the step's retry is due (or when none is pending)."""
    if not isinstance(ev, Timer) or ev.reason != "retry" or not 0 <= ev.step < len(before.steps):
        return False
    retry_at = before.steps[ev.step].retry_at
    return retry_at is None or now < retry_at - 1e-6


@attrs.frozen
class Applied:
    """The latest event the machine saw, with what it looked like before."""

    event: Event | None  # None: adopt()
    before: SagaRecord | None
    before_json: bytes
    tr: Transition
    healthy: frozenset[str]
    """The router's healthy regions when the event was applied."""
    now: float


class SagaMachineModel(RuleBasedStateMachine):
    """One saga driven by generated events; the world is its task keys and armed timers."""

    def __init__(self) -> None:
        super().__init__()
        self.router = Router(latency_ms=LATENCY)
        self.now = T0
        self.tasks: dict[tuple[str, int], tuple[str, int]] = {}
        """(region, step) -> (kind, attempt): task keys as the orchestrator's txns left them."""
        self.log: list[tuple[int, str, int, str]] = []
        """Every dispatch ever made: (step, kind, attempt, region)."""
        self.sent: list[Result] = []
        self.slow: list[tuple[int, str, int, str]] = []
        """Runs whose deadline fired while their task was out: (step, kind, attempt, region)."""
        self.armed: list[tuple[float, Timer]] = []
        self.run_failovers = 0
        self.after_final = 0
        self.last: Applied | None = None
        self.rec: SagaRecord | None = None

    # -- plumbing -------------------------------------------------------------------------

    def _set_regions(self, healthy: frozenset[str]) -> None:
        self.router.update({r: RegionInfo(name=r, compliance=TAGS[r]) for r in healthy})

    def _record(self, event: Event | None, before: SagaRecord | None, before_json: bytes, tr: Transition) -> None:
        self.last = Applied(event, before, before_json, tr, frozenset(self.router.regions), self.now)
        # the orchestrator's txn deletes first, then puts (a put of a deleted key wins)
        for key in tr.delete_tasks:
            self.tasks.pop(key, None)
        for d in tr.dispatch:
            self.tasks[(d.region, d.step)] = (d.kind, d.attempt)
            self.log.append((d.step, d.kind, d.attempt, d.region))
        for entry in tr.failovers:
            if any(d.step == entry["step"] and d.kind == RUN for d in tr.dispatch):
                self.run_failovers += 1
        self.armed.extend(tr.timers)

    def _apply(self, event: Event) -> None:
        assert self.rec is not None
        before = self.rec.clone()
        before_json = self.rec.to_json()
        tr = apply(self.rec, self.saga.spec, event, now=self.now, route=self.router, settings=self.cfg)
        self.after_final += before.is_final
        self._record(event, before, before_json, tr)

    def _result(self, step: int, kind: str, attempt: int, region: str, outcome: str) -> Result:
        ok = outcome == "ok"
        return Result(
            step, kind, attempt, ok, KEYS.result(region or "eu", SID, step, kind, attempt).decode(),
            error=None if ok else f"{outcome} failure", retryable=outcome == "retryable", region=region,
        )

    # -- rules ----------------------------------------------------------------------------

    def _adopt(self, case: Case, healthy: frozenset[str]) -> None:
        make, self.cfg = case
        self.saga: Saga = make()
        self._set_regions(healthy)
        self.tasks.clear()
        self.log.clear()
        self.sent.clear()
        self.slow.clear()
        self.armed.clear()
        self.run_failovers = 0
        self.after_final = 0
        self.rec, tr = adopt(
            self.saga.spec, saga_id=SID, txid=7, now=self.now, route=self.router, settings=self.cfg,
            trace={}, term=1,
        )
        self._record(None, None, b"", tr)

    def _open(self) -> bool:
        """Events still worth feeding: the saga is live, or final but only just."""
        return self.rec is not None and (not self.rec.is_final or self.after_final < 3)

    @initialize(case=st.sampled_from(CASES), healthy=HEALTHY)
    def start(self, case: Case, healthy: frozenset[str]) -> None:
        self._adopt(case, healthy)

    @precondition(lambda self: self.rec is not None and self.rec.is_final)
    @rule(case=st.sampled_from(CASES), healthy=HEALTHY)
    def next_saga(self, case: Case, healthy: frozenset[str]) -> None:
        """The saga is over (and was poked a little): the world moves on to a fresh one."""
        self._adopt(case, healthy)

    @rule(dt=st.sampled_from([0.5, 2.0, 7.0, 31.0]))
    def advance_clock(self, dt: float) -> None:
        self.now += dt

    @precondition(lambda self: self._open() and bool(self.tasks))
    @rule(pick=st.integers(0, 15), outcome=st.sampled_from(["ok", "ok", "ok", "retryable", "fatal"]))
    def worker_reports(self, pick: int, outcome: str) -> None:
        """A worker ran a task that is really there and recorded its outcome."""
        (region, step), (kind, attempt) = sorted(self.tasks.items())[pick % len(self.tasks)]
        ev = self._result(step, kind, attempt, region, outcome)
        self.sent.append(ev)
        self._apply(ev)

    @precondition(lambda self: self._open() and bool(self.tasks))
    @rule(pick=st.integers(0, 15))
    def worker_succeeds(self, pick: int) -> None:
        """A worker ran a task that is really there, and it worked (the common case)."""
        self.worker_reports(pick, "ok")

    @precondition(lambda self: self._open() and bool(self.log))
    @rule(pick=st.integers(0, 7), outcome=st.sampled_from(["ok", "ok", "retryable", "fatal"]))
    def late_result(self, pick: int, outcome: str) -> None:
        """A result of one of the latest runs dispatched: superseded, of the other kind, or current."""
        step, kind, attempt, region = self.log[-1 - pick % len(self.log)]
        ev = self._result(step, kind, attempt, region, outcome)
        self.sent.append(ev)
        self._apply(ev)

    @precondition(lambda self: self._open() and bool(self.sent))
    @rule(pick=st.integers(0, 31))
    def duplicate_result(self, pick: int) -> None:
        """A result delivered again (a watch replay, a rebuild after a leader change)."""
        self._apply(self.sent[-1 - pick % len(self.sent)])

    @precondition(lambda self: self._open() and bool(self.log))
    @rule(pick=st.integers(0, 31), current=st.booleans(), roll=st.integers(0, 1))
    def claim_lost(self, pick: int, current: bool, roll: int) -> None:
        """A claim vanished without a result: of a task now there, or of any past run (half
        the times drawn: each one costs a run, and sagas should get far enough)."""
        if roll:
            return
        if current and self.tasks:
            (_region, step), (kind, attempt) = sorted(self.tasks.items())[pick % len(self.tasks)]
        else:
            step, kind, attempt, _region = self.log[-1 - pick % len(self.log)]
        self._apply(ClaimLost(step, kind, attempt))

    @precondition(lambda self: self._open())
    @rule(roll=st.integers(0, 3))
    def cancel(self, roll: int) -> None:
        """Someone cancels (a quarter of the times drawn, so that sagas get far enough first)."""
        if roll == 0:
            self._apply(Cancel())

    @rule(healthy=HEALTHY, tell=st.booleans())
    def regions_change(self, healthy: frozenset[str], tell: bool) -> None:
        """The router sees a new healthy set; the machine hears of it now or later."""
        self._set_regions(healthy)
        if tell:
            self._apply(RegionsChanged(healthy))

    @precondition(lambda self: self._open())
    @rule()
    def regions_event(self) -> None:
        """The (possibly delayed, possibly repeated) RegionsChanged for the router's view."""
        self._apply(RegionsChanged(frozenset(self.router.regions)))

    @precondition(lambda self: self._open() and bool(self.armed))
    @rule(pick=st.integers(0, 3))
    def timer_fires(self, pick: int) -> None:
        """An armed timer fires once, when due: mostly the next one due, sometimes a later one
        first (timers re-armed by a new leader); the clock moves to its time if it is ahead."""
        assert self.rec is not None
        steps = self.rec.steps
        # timers of superseded attempts are no-ops (an invariant pins it): fire them
        # last, or the clock runs through them instead of through the saga
        self.armed.sort(key=lambda p: (p[1].attempt < _current(steps[p[1].step], p[1].kind), p[0]))
        self._fire(pick % len(self.armed))

    @precondition(lambda self: self._open() and any(t.reason == "retry" and at > self.now for at, t in self.armed))
    @rule(pick=st.integers(0, 3))
    def retry_timer_early(self, pick: int) -> None:
        """A retry timer fires before it is due (a spurious wake-up); it stays armed."""
        early = [t for at, t in self.armed if t.reason == "retry" and at > self.now]
        self._apply(early[pick % len(early)])

    def _fire(self, index: int) -> None:
        at, timer = self.armed.pop(index)
        self.now = max(self.now, at)
        if timer.reason == "deadline":
            # the run may still be going on somewhere, only slowly: it may report later
            self.slow.extend(
                (step, kind, attempt, region)
                for (region, step), (kind, attempt) in self.tasks.items()
                if (step, kind, attempt) == (timer.step, timer.kind, timer.attempt)
            )
        self._apply(timer)

    @precondition(lambda self: self._open() and bool(self.slow))
    @rule(pick=st.integers(0, 3), outcome=st.sampled_from(["ok", "ok", "retryable", "fatal"]))
    def slow_worker_reports(self, pick: int, outcome: str) -> None:
        """A run whose deadline passed reports after all (its retry may be waiting, or running)."""
        step, kind, attempt, region = self.slow.pop(-1 - pick % len(self.slow))
        ev = self._result(step, kind, attempt, region, outcome)
        self.sent.append(ev)
        self._apply(ev)

    @precondition(lambda self: self._open())
    @rule(step=st.integers(0, 3), kind=st.sampled_from([RUN, COMPENSATE]), back=st.integers(1, 3),
          reason=st.sampled_from(["retry", "deadline", "no_region"]))
    def stale_timer(self, step: int, kind: str, back: int, reason: str) -> None:
        """A timer for an attempt older than the step's current one (left over from a past leader)."""
        assert self.rec is not None
        step %= len(self.rec.steps)
        attempt = _current(self.rec.steps[step], kind) - back
        if attempt >= 0:
            self._apply(Timer(step, kind, attempt, reason))

    # -- invariants -----------------------------------------------------------------------

    def _rec(self) -> SagaRecord:
        assert self.rec is not None
        return self.rec

    @check
    def statuses_are_known(self) -> None:
        """The saga status and every step state are ones the model defines."""
        if self.rec is None:
            return
        assert self.rec.status in STATUSES
        assert all(s.state in LIFECYCLE for s in self.rec.steps)
        assert (self.rec.finished is not None) == self.rec.is_final

    @check
    def final_is_absorbing(self) -> None:
        """Once completed/compensated/failed, an event leaves the record as it was and has no effect."""
        last = self.last
        if last is None or last.before is None or not last.before.is_final:
            return
        assert last.tr == Transition()
        assert self._rec().to_json() == last.before_json

    @check
    def completed_means_every_step_done(self) -> None:
        """`completed` only after every step succeeded, with no error recorded."""
        if self.rec is None or self.rec.status != COMPLETED:
            return
        assert [s.state for s in self.rec.steps] == ["done"] * len(self.rec.steps)
        assert self.rec.error is None

    @check
    def compensation_undoes_every_done_step(self) -> None:
        """compensated/failed: no step left done or active; a step with a compensation is
        `compensated` only after a compensation run; `failed` names a step whose compensation gave up."""
        if self.rec is None:
            return
        for index, s in enumerate(self.rec.steps):
            if s.state == "compensated" and self.saga.steps[index].compensation is not None:
                assert s.comp_run >= 1, (index, s)
        if self.rec.status in (COMPENSATED, FAILED):
            states = {s.state for s in self.rec.steps}
            assert states <= {"compensated", "comp_failed", "failed", "skipped"}, states
            assert ("comp_failed" in states) == (self.rec.status == FAILED), states

    @check
    def running_saga_has_its_shape(self) -> None:
        """running: the steps before `rec.step` are done, it is pending or dispatched, the rest
        pending; compensating: nothing pending or dispatched is left."""
        if self.rec is None:
            return
        rec = self.rec
        states = [s.state for s in rec.steps]
        if rec.status == RUNNING:
            assert states[: rec.step] == ["done"] * rec.step, (rec.step, states)
            assert states[rec.step] in ("pending", "dispatched"), (rec.step, states)
            assert states[rec.step + 1 :] == ["pending"] * (len(states) - rec.step - 1), (rec.step, states)
        elif rec.status == COMPENSATING:
            assert not {"pending", "dispatched"} & set(states), states

    @check
    def at_most_one_active_step(self) -> None:
        """At most one step is dispatched or compensating at any time."""
        if self.rec is None:
            return
        assert sum(s.state in ACTIVE for s in self.rec.steps) <= 1

    @check
    def step_states_follow_the_lifecycle(self) -> None:
        """Each step moves only forward (pending -> dispatched -> done -> compensating -> ...);
        failed, skipped, compensated and comp_failed never change again."""
        last = self.last
        if last is None or last.before is None:
            return
        for index, (old, new) in enumerate(zip(last.before.steps, self._rec().steps, strict=True)):
            assert new.state in LIFECYCLE[old.state], (index, old.state, new.state, last.event)

    @check
    def counters_never_decrease(self) -> None:
        """run, comp_run, failures and comp_failures per step, and the failover log, only grow."""
        last = self.last
        if last is None or last.before is None:
            return
        rec = self._rec()
        for old, new in zip(last.before.steps, rec.steps, strict=True):
            for field in ("run", "comp_run", "failures", "comp_failures"):
                assert getattr(new, field) >= getattr(old, field), (field, old, new)
        assert rec.failovers[: len(last.before.failovers)] == last.before.failovers

    @check
    def failures_within_policy(self) -> None:
        """Failed runs never exceed the retry policy's attempts (nor the runs made); same for compensations."""
        if self.rec is None:
            return
        for s, step in zip(self.rec.steps, self.saga.steps, strict=True):
            assert s.failures <= min(step.retry.attempts, s.run), (s.name, s.failures, s.run)
            assert s.comp_failures <= min(step.compensation_retry.attempts, s.comp_run), (s.name, s.comp_failures)

    @check
    def failovers_within_budget(self) -> None:
        """Failovers of forward runs stay within the lower of the saga's and the deployment's
        max_failovers (compensations may always move, docs/sagas.md)."""
        if self.rec is None:
            return
        assert self.run_failovers <= self.cfg.failover_limit(self.saga.spec)

    @check
    def stale_or_misdirected_events_are_noops(self) -> None:
        """A failed result, lost claim or timer of an attempt older than the step's, a result of a
        kind the step is not running, or a retry timer before its time changes nothing."""
        last = self.last
        if last is None or last.before is None or last.event is None:
            return
        if (
            _stale(last.event, last.before)
            or _misdirected(last.event, last.before)
            or _early(last.event, last.before, last.now)
        ):
            assert last.tr == Transition(), last.tr
            assert self._rec().to_json() == last.before_json

    @check
    def changes_are_flagged(self) -> None:
        """A transition that changed the record says so (the orchestrator writes nothing otherwise)."""
        last = self.last
        if last is None or last.before is None:
            return
        if self._rec().to_json() != last.before_json:
            assert last.tr.changed

    @check
    def no_new_run_after_cancel(self) -> None:
        """After a cancel no run starts again, except to move a run in flight off a dead region."""
        last = self.last
        if last is None or last.before is None or not last.before.cancel_requested:
            return
        for d in last.tr.dispatch:
            if d.kind == RUN:
                assert any(f["step"] == d.step for f in last.tr.failovers), (d, last.event)

    @check
    def dispatches_are_sound(self) -> None:
        """At most one dispatch per transition, for a step in range, in a region healthy and
        compliant at that moment, with attempt = the step's run/comp_run, one past the previous;
        a dispatch away from the step's region is a recorded failover, and every failover moves one."""
        last = self.last
        if last is None:
            return
        rec = self._rec()
        assert len(last.tr.dispatch) <= 1, last.tr.dispatch
        for d in last.tr.dispatch:
            assert 0 <= d.step < len(rec.steps)
            assert d.region in last.healthy, (d, last.healthy)
            assert self.saga.steps[d.step].compliance <= TAGS[d.region], d
            s = rec.steps[d.step]
            assert s.state == ("dispatched" if d.kind == RUN else "compensating"), (d, s)
            assert d.attempt == _current(s, d.kind)
            assert s.region == d.region and not s.waiting_region and s.retry_at is None
            previous = 0 if last.before is None else _current(last.before.steps[d.step], d.kind)
            assert d.attempt == previous + 1, (d, previous)
            # a step moves to another region only by a recorded failover (a success reported
            # from elsewhere does not move it: the effect happened there)
            home = None if last.before is None else last.before.steps[d.step].region
            ev = last.event
            if isinstance(ev, Result) and ev.ok and ev.step == d.step and ev.region:
                home = ev.region
            if home is not None and d.region != home:
                moves = [(f["step"], f["from"], f["to"]) for f in last.tr.failovers]
                assert (d.step, home, d.region) in moves, (d, home, last.tr.failovers)
        for entry in last.tr.failovers:
            assert any(d.step == entry["step"] and d.region == entry["to"] for d in last.tr.dispatch), entry

    @check
    def tasks_match_the_record(self) -> None:
        """The task keys left in etcd are exactly those of the runs in flight (none once final)."""
        if self.rec is None:
            return
        expected = {}
        for index, s in enumerate(self.rec.steps):
            if s.state in ACTIVE and s.retry_at is None and not s.waiting_region:
                assert s.region is not None
                kind = RUN if s.state == "dispatched" else COMPENSATE
                expected[(s.region, index)] = (kind, _current(s, kind))
        assert self.tasks == expected

    @check
    def never_stuck(self) -> None:
        """A saga that is not final has a task out, or an armed timer that would move it."""
        rec = self.rec
        if rec is None or rec.is_final or self.tasks:
            return
        for at, timer in reversed(self.armed):
            probe = rec.clone()
            tr = apply(probe, self.saga.spec, timer, now=max(self.now, at), route=self.router, settings=self.cfg)
            if tr.changed or tr.dispatch:
                return
        raise AssertionError(f"stuck: {[(s.name, s.state, s.retry_at, s.waiting_region) for s in rec.steps]}")

    @check
    def record_round_trips_through_json(self) -> None:
        """The record survives its JSON codec unchanged."""
        if self.rec is None:
            return
        assert SagaRecord.from_json(self.rec.to_json()) == self.rec

    @check
    def history_stays_bounded(self) -> None:
        """The history never holds more than MAX_HISTORY entries."""
        if self.rec is None:
            return
        assert len(self.rec.history) <= MAX_HISTORY


RUN_SETTINGS = settings(
    max_examples=400, stateful_step_count=60, deadline=None, derandomize=True, database=None,
)


def test_saga_machine_invariants() -> None:
    """Generated interleavings of results, lost claims, cancels, region changes and timers keep every invariant."""
    run_state_machine_as_test(SagaMachineModel, settings=RUN_SETTINGS)


def _fire(model: SagaMachineModel, step: int, kind: str, reason: str) -> None:
    """Fire the armed timer (step, kind, reason) as ``timer_fires`` would."""
    model._fire(next(i for i, (_at, t) in enumerate(model.armed) if (t.step, t.kind, t.reason) == (step, kind, reason)))


def _replay(model: SagaMachineModel, *moves: Callable[[], None]) -> None:
    """Run the moves one by one, checking every invariant after each, as hypothesis does."""
    for move in moves:
        move()
        for name in CHECKS:
            getattr(model, name)()


def test_late_compensation_success_during_region_wait_stays_compensated() -> None:
    """A compensation that succeeds while its retry waits for a region stays compensated, and the saga ends compensated."""
    m = SagaMachineModel()
    _replay(
        m,
        lambda: m.start(CASES[2], frozenset(REGIONS)),  # book: 4 steps, all compensated
        lambda: m.worker_succeeds(0),  # b0 done
        lambda: m.worker_succeeds(0),  # b1 done
        lambda: m.worker_reports(0, "fatal"),  # b2 failed: compensate b1 (attempt 1)
        lambda: _fire(m, 1, COMPENSATE, "deadline"),  # b1's compensation is slow: retry in 1 s
        lambda: m.regions_change(frozenset(), True),  # every region goes down
        lambda: _fire(m, 1, COMPENSATE, "retry"),  # no region for the retry: b1 waits
        lambda: m.slow_worker_reports(0, "ok"),  # slow attempt 1 succeeds: b1 compensated, b0 waits
        lambda: _fire(m, 1, COMPENSATE, "no_region"),  # b1's old wait timer fires: nothing to fail
        lambda: m.regions_change(frozenset(REGIONS), True),  # regions back: b0's compensation goes out
        lambda: m.worker_succeeds(0),  # b0 compensated
    )
    assert m.rec is not None
    assert (m.rec.status, [s.state for s in m.rec.steps]) == (
        COMPENSATED, ["compensated", "compensated", "failed", "skipped"]
    )


def test_late_run_success_during_region_wait_moves_on() -> None:
    """A run that succeeds while its retry waits for a region ends the wait; a later compensation waits afresh."""
    m = SagaMachineModel()
    _replay(
        m,
        lambda: m.start(CASES[2], frozenset(REGIONS)),  # book: 4 steps, all compensated
        lambda: _fire(m, 0, RUN, "deadline"),  # b0's run is slow: retry in 1 s
        lambda: m.regions_change(frozenset(), True),  # every region goes down
        lambda: _fire(m, 0, RUN, "retry"),  # no region for the retry: b0 waits
        lambda: m.slow_worker_reports(0, "ok"),  # slow attempt 1 succeeds: b0 done, b1 waits
        lambda: m.regions_change(frozenset(REGIONS), True),  # regions back: b1 goes out
        lambda: m.regions_change(frozenset(), False),  # all down again, the router knows first
        lambda: m.worker_reports(0, "fatal"),  # b1 fails: b0's compensation waits, with its own timer
        lambda: _fire(m, 0, RUN, "no_region"),  # b0's old run-wait timer: nothing to do
        lambda: m.regions_change(frozenset(REGIONS), True),  # regions back: b0's compensation goes out
        lambda: m.worker_succeeds(0),  # b0 compensated
    )
    assert m.rec is not None
    assert (m.rec.status, [s.state for s in m.rec.steps]) == (
        COMPENSATED, ["compensated", "failed", "skipped", "skipped"]
    )
