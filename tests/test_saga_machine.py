"""The pure saga state machine: record + event -> new record + effects (no etcd, no clock)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest

from whizorch.saga._definition import Retry, Saga
from whizorch.saga._keys import Keys
from whizorch.saga._machine import (
    COMPENSATE,
    RUN,
    Cancel,
    ClaimLost,
    Dispatch,
    RegionsChanged,
    Result,
    Route,
    Settings,
    Timer,
    Transition,
    adopt,
    apply,
)
from whizorch.saga._model import SagaRecord
from whizorch.saga._spec import StepSpec

T0 = 1_000.0
TIMEOUT = 10.0
SETTINGS = Settings(dispatch_grace_s=5.0, no_region_timeout_s=30.0)
DEADLINE = TIMEOUT + SETTINGS.dispatch_grace_s
RETRY = Retry(attempts=3, backoff_s=1.0, multiplier=2.0, jitter=False)
COMP_RETRY = Retry(attempts=2, backoff_s=1.0, jitter=False)
KEYS = Keys()
SID = "t-1"


class FakeRoute(Route):
    """Healthy regions, a fixed pick order and an explicit failover map.

    A region absent from ``order`` is never offered: it stands for a healthy region the
    step may not use (compliance).
    """

    def __init__(
        self, *up: str, order: Sequence[str] = ("a", "b", "c"), failover: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        self.up = set(up)
        self.order = list(order)
        self.failover_map = {k: list(v) for k, v in (failover or {}).items()}
        self.failover_calls: list[tuple[str, str]] = []
        self.lacking: str | None = None
        """When set: healthy regions exist, but no worker there has the saga's version."""

    def why_not(self, step: StepSpec) -> tuple[str, str]:  # type: ignore[override]
        if self.lacking is not None:
            return "worker", f"no live worker can run saga {step.saga!r} version {self.lacking!r}"
        return super().why_not(step)

    def pick(self, step: StepSpec, *, exclude: frozenset[str] = frozenset()) -> str | None:
        return next((r for r in self.order if r in self.up and r not in exclude), None)

    def failover(self, step: StepSpec, *, failed: str) -> str | None:
        self.failover_calls.append((step.name, failed))
        prefs = self.failover_map.get(failed, self.order)
        return next((r for r in prefs if r in self.up and r != failed and r in self.order), None)

    def healthy(self, region: str) -> bool:
        return region in self.up

    def set(self, *up: str) -> RegionsChanged:
        """Change the healthy set; return the event the orchestrator would feed."""
        self.up = set(up)
        return RegionsChanged(frozenset(up))


def build(
    n: int = 3,
    *,
    retry: Retry = RETRY,
    comp_retry: Retry = COMP_RETRY,
    max_failovers: int = 3,
    no_comp: Iterable[int] = (),
    timeout_s: float | None = TIMEOUT,
) -> Saga:
    saga = Saga("transfer", max_failovers=max_failovers)
    skip = set(no_comp)

    async def handler(ctx: Any, value: Any) -> None:
        return None

    for i in range(n):
        st = saga.step(handler, name=f"s{i}", retry=retry, timeout_s=timeout_s)
        if i not in skip:
            st.compensate(handler, retry=comp_retry)
    return saga


def timer(tr: Transition, reason: str) -> tuple[float, Timer]:
    found = [(at, t) for at, t in tr.timers if t.reason == reason]
    assert len(found) == 1, tr.timers
    return found[0]


def events(rec: SagaRecord) -> list[str]:
    return [h["event"] for h in rec.history]


class Harness:
    """One saga driven by hand: adopt, then feed events at chosen times."""

    def __init__(self, saga: Saga, route: FakeRoute, settings: Settings = SETTINGS) -> None:
        self.saga = saga
        self.route = route
        self.settings = settings
        self.now = T0
        self.rec, self.tr = adopt(
            saga.spec, saga_id=SID, txid=7, now=T0, route=route, settings=settings, trace={"traceparent": "x"}, term=3
        )
        self.armed = list(self.tr.timers)
        self.check()

    def check(self) -> None:
        # every state the machine leaves behind must survive the record's JSON codec
        assert SagaRecord.from_json(self.rec.to_json()) == self.rec

    def apply(self, event: Any, *, at: float | None = None) -> Transition:
        if at is not None:
            self.now = at
        self.tr = apply(self.rec, self.saga.spec, event, now=self.now, route=self.route, settings=self.settings)
        self.armed.extend(self.tr.timers)
        self.check()
        return self.tr

    def result(self, i: int, ok: bool, attempt: int | None = None, *, kind: str = RUN, **kw: Any) -> Transition:
        st = self.rec.steps[i]
        a = attempt if attempt is not None else (st.run if kind == RUN else st.comp_run)
        where = kw.get("region") or st.region or "a"
        return self.apply(Result(i, kind, a, ok, KEYS.result(where, SID, i, kind, a).decode(), **kw))

    def ok(self, i: int, attempt: int | None = None, *, kind: str = RUN, region: str = "") -> Transition:
        return self.result(i, True, attempt, kind=kind, region=region)

    def fail(
        self, i: int, attempt: int | None = None, *, kind: str = RUN, error: str = "boom", retryable: bool = True
    ) -> Transition:
        return self.result(i, False, attempt, kind=kind, error=error, retryable=retryable)

    def fire(self, reason: str, tr: Transition | None = None) -> Transition:
        """Fire the timer ``tr`` set, else the latest one armed for ``reason``."""
        at, t = timer(tr, reason) if tr is not None else [p for p in self.armed if p[1].reason == reason][-1]
        return self.apply(t, at=at)

    def exhaust(self, i: int, *, kind: str = RUN) -> Transition:
        """Fail every run of the step its policy allows."""
        step = self.saga.steps[i]
        policy = step.retry if kind == RUN else step.compensation_retry
        for _ in range(policy.attempts - 1):
            self.fail(i, kind=kind)
            self.fire("retry")
        return self.fail(i, kind=kind)

    def step(self, i: int) -> Any:
        return self.rec.steps[i]


def unchanged(tr: Transition) -> bool:
    return tr == Transition()


# -- happy path --------------------------------------------------------------------------


def test_adopt_dispatches_first_step_with_deadline() -> None:
    """adopt() builds a running record and dispatches step 0 (attempt 1) with a deadline timer."""
    h = Harness(build(), FakeRoute("a", "b"))
    rec = h.rec
    assert (rec.id, rec.saga, rec.txid, rec.status, rec.step, rec.leader_term) == (SID, "transfer", 7, "running", 0, 3)
    assert rec.trace == {"traceparent": "x"}
    assert h.tr.changed
    assert h.tr.dispatch == [Dispatch(0, RUN, 1, "a")]
    assert h.tr.timers == [(T0 + DEADLINE, Timer(0, RUN, 1, "deadline"))]
    st = h.step(0)
    assert (st.state, st.region, st.run, st.regions, st.started) == ("dispatched", "a", 1, ["a"], T0)
    assert [s.state for s in rec.steps[1:]] == ["pending", "pending"]
    assert events(rec) == ["adopted", "dispatched"]


def test_happy_path_runs_steps_in_order_then_completes() -> None:
    """Each success dispatches the next step; the last one completes the saga with `finished` set."""
    h = Harness(build(), FakeRoute("a", "b"))
    h.now = T0 + 1
    assert h.ok(0).dispatch == [Dispatch(1, RUN, 1, "a")]
    assert h.tr.delete_tasks == [("a", 0)]
    assert h.rec.step == 1
    assert h.ok(1).dispatch == [Dispatch(2, RUN, 1, "a")]
    h.now = T0 + 2
    tr = h.ok(2)
    assert tr.changed and tr.dispatch == [] and tr.delete_tasks == [("a", 2)]
    rec = h.rec
    assert rec.status == "completed" and rec.is_final
    assert rec.finished == T0 + 2 and rec.updated == T0 + 2
    assert rec.error is None
    assert [s.state for s in rec.steps] == ["done"] * 3
    assert events(rec)[-1] == "completed"
    assert rec.failovers == [] and rec.regions == ["a"]


def test_record_holds_result_keys_not_outputs() -> None:
    """The record references each output by its result key; no output value is stored."""
    h = Harness(build(2), FakeRoute("a"))
    h.ok(0)
    h.ok(1)
    assert [s.result for s in h.rec.steps] == [
        "whizorch/run/a/t-1/0/run-1",
        "whizorch/run/a/t-1/1/run-1",
    ]
    assert b"output" not in h.rec.to_json()


# -- retries -------------------------------------------------------------------------------


def test_retryable_failure_schedules_retry_then_redispatches() -> None:
    """A retryable failure with attempts left sets a retry timer; only its firing dispatches attempt+1."""
    h = Harness(build(), FakeRoute("a", "b"))
    tr = h.fail(0, error="E1")
    assert tr.dispatch == []
    assert tr.delete_tasks == [("a", 0)]
    assert tr.timers == [(T0 + 1.0, Timer(0, RUN, 1, "retry"))]
    st = h.step(0)
    assert (st.state, st.failures, st.error, st.retry_at) == ("dispatched", 1, "E1", T0 + 1.0)
    tr = h.fire("retry")
    assert tr.dispatch == [Dispatch(0, RUN, 2, "a")]
    assert tr.timers == [(T0 + 1.0 + DEADLINE, Timer(0, RUN, 2, "deadline"))]
    assert (st.run, st.retry_at, st.failures) == (2, None, 1)


def test_retry_delay_grows_per_failure() -> None:
    """The n-th failure waits backoff * multiplier**(n-1) (no jitter here)."""
    h = Harness(build(retry=Retry(attempts=4, backoff_s=1.0, multiplier=3.0, jitter=False)), FakeRoute("a"))
    delays = []
    for _ in range(3):
        at, _t = timer(h.fail(0), "retry")
        delays.append(at - h.now)
        h.fire("retry")
    assert delays == [1.0, 3.0, 9.0]


def test_retry_timer_early_or_stale_is_ignored() -> None:
    """A retry timer before retry_at, or for another attempt, does nothing."""
    h = Harness(build(), FakeRoute("a"))
    h.fail(0)
    assert unchanged(h.apply(Timer(0, RUN, 1, "retry"), at=T0 + 0.5))
    assert unchanged(h.apply(Timer(0, RUN, 7, "retry"), at=T0 + 2))
    assert h.step(0).run == 1


def test_retry_stays_in_its_region_while_healthy() -> None:
    """A retry runs in the step's region even when the router would now pick another."""
    route = FakeRoute("a", "b")
    h = Harness(build(), route)
    h.fail(0)
    route.order = ["b", "a"]
    assert h.fire("retry").dispatch == [Dispatch(0, RUN, 2, "a")]
    assert h.rec.failovers == []


def test_retries_exhausted_start_compensation() -> None:
    """Past its attempts the step fails and the saga compensates, reason kept in rec.error."""
    h = Harness(build(), FakeRoute("a"))
    h.ok(0)
    h.ok(1)
    tr = h.exhaust(2)
    rec = h.rec
    assert rec.status == "compensating"
    assert rec.error == "step 's2' failed: boom"
    assert (h.step(2).state, h.step(2).failures) == ("failed", 3)
    assert tr.dispatch == [Dispatch(1, COMPENSATE, 1, "a")]
    assert ("a", 2) in tr.delete_tasks


def test_non_retryable_failure_is_not_retried() -> None:
    """retryable=False fails the step at once, attempts notwithstanding."""
    h = Harness(build(), FakeRoute("a"))
    h.ok(0)
    tr = h.fail(1, retryable=False)
    assert h.step(1).state == "failed" and h.step(1).failures == 1
    assert [t for _, t in tr.timers if t.reason == "retry"] == []
    assert tr.dispatch == [Dispatch(0, COMPENSATE, 1, "a")]


# -- compensation ------------------------------------------------------------------------


def test_compensation_runs_in_reverse_one_at_a_time() -> None:
    """Completed steps are compensated last-first, each only after the previous one succeeded."""
    h = Harness(build(4), FakeRoute("a"))
    for i in range(3):
        h.ok(i)
    assert h.exhaust(3).dispatch == [Dispatch(2, COMPENSATE, 1, "a")]
    assert h.tr.timers == [(h.now + DEADLINE, Timer(2, COMPENSATE, 1, "deadline"))]
    assert h.ok(2, kind=COMPENSATE).dispatch == [Dispatch(1, COMPENSATE, 1, "a")]
    assert h.tr.delete_tasks == [("a", 2)]
    assert h.ok(1, kind=COMPENSATE).dispatch == [Dispatch(0, COMPENSATE, 1, "a")]
    tr = h.ok(0, kind=COMPENSATE)
    assert tr.dispatch == []
    assert h.rec.status == "compensated" and h.rec.finished == h.now
    assert [s.state for s in h.rec.steps] == ["compensated", "compensated", "compensated", "failed"]
    assert events(h.rec)[-1] == "compensated_all"


def test_steps_without_compensation_are_skipped() -> None:
    """A step with no compensation is marked compensated and the next one is dispatched at once."""
    h = Harness(build(3, no_comp=[1]), FakeRoute("a"))
    h.ok(0)
    h.ok(1)
    tr = h.fail(2, retryable=False)
    assert tr.dispatch == [Dispatch(0, COMPENSATE, 1, "a")]
    assert h.step(1).state == "compensated"
    assert events(h.rec)[-2:] == ["nothing_to_compensate", "compensation_dispatched"]
    assert h.rec.history[-2]["step"] == 1


def test_pending_steps_are_skipped_when_compensating() -> None:
    """Steps never reached are `skipped`, and a saga with nothing to undo ends compensated at once."""
    h = Harness(build(3), FakeRoute("a"))
    tr = h.fail(0, retryable=False)
    assert tr.dispatch == []
    assert [s.state for s in h.rec.steps] == ["failed", "skipped", "skipped"]
    assert h.rec.status == "compensated" and h.rec.error == "step 's0' failed: boom"


def test_compensation_retries_with_its_own_policy() -> None:
    """A failed compensation is retried by compensation_retry: timer, then attempt+1 in the same region."""
    h = Harness(build(2), FakeRoute("a"))
    h.ok(0)
    h.fail(1, retryable=False)
    tr = h.fail(0, kind=COMPENSATE, error="undo failed")
    assert tr.timers == [(h.now + 1.0, Timer(0, COMPENSATE, 1, "retry"))]
    assert (h.step(0).state, h.step(0).comp_failures, h.step(0).comp_error) == ("compensating", 1, "undo failed")
    assert h.fire("retry").dispatch == [Dispatch(0, COMPENSATE, 2, "a")]


def test_compensation_giving_up_fails_saga_but_runs_the_rest() -> None:
    """A compensation past its retries is comp_failed; earlier compensations still run; saga `failed` with both reasons."""
    h = Harness(build(3), FakeRoute("a"))
    h.ok(0)
    h.ok(1)
    h.fail(2, retryable=False)
    tr = h.exhaust(1, kind=COMPENSATE)  # COMP_RETRY: 2 attempts
    assert h.step(1).state == "comp_failed" and h.step(1).comp_error == "boom"
    assert tr.dispatch == [Dispatch(0, COMPENSATE, 1, "a")]  # nothing silently dropped
    assert h.rec.status == "compensating"
    h.ok(0, kind=COMPENSATE)
    rec = h.rec
    assert rec.status == "failed" and rec.is_final
    assert rec.error == "step 's2' failed: boom; compensation gave up for s1"
    assert [s.state for s in rec.steps] == ["compensated", "comp_failed", "failed"]
    assert "compensation_gave_up" in events(rec) and events(rec)[-1] == "failed"


def test_non_retryable_compensation_failure_gives_up_at_once() -> None:
    """A compensation failing with retryable=False is not retried."""
    h = Harness(build(2), FakeRoute("a"))
    h.ok(0)
    h.fail(1, retryable=False)
    h.fail(0, kind=COMPENSATE, retryable=False)
    assert h.rec.status == "failed" and h.step(0).comp_failures == 1


def test_compensation_deadline_counts_as_failure() -> None:
    """No compensation result within its timeout + grace counts as a (retryable) compensation failure."""
    h = Harness(build(2), FakeRoute("a"))
    h.ok(0)
    h.fail(1, retryable=False)
    tr = h.fire("deadline")
    assert h.step(0).comp_failures == 1
    assert h.step(0).comp_error == "no result within the step timeout"
    assert timer(tr, "retry")[1] == Timer(0, COMPENSATE, 1, "retry")


def test_superseded_compensation_success_counts() -> None:
    """A success of an earlier compensation attempt completes the compensation."""
    h = Harness(build(2), FakeRoute("a"))
    h.ok(0)
    h.fail(1, retryable=False)
    h.apply(ClaimLost(0, COMPENSATE, 1))
    h.fire("retry")
    assert h.step(0).comp_run == 2
    h.ok(0, 1, kind=COMPENSATE)
    assert h.rec.status == "compensated"


# -- timeouts and lost claims ------------------------------------------------------------


def test_step_deadline_counts_as_failure() -> None:
    """The dispatch deadline firing without a result is a retryable failure of that run."""
    h = Harness(build(), FakeRoute("a"))
    tr = h.fire("deadline")
    st = h.step(0)
    assert (st.failures, st.error) == (1, "no result within the step timeout")
    assert tr.timers == [(T0 + DEADLINE + 1.0, Timer(0, RUN, 1, "retry"))]
    assert tr.delete_tasks == [("a", 0)]


def test_stale_deadlines_are_ignored() -> None:
    """A deadline for a superseded attempt, during a retry delay, or after success does nothing."""
    h = Harness(build(), FakeRoute("a"))
    first = h.tr
    h.fail(0)
    assert unchanged(h.fire("deadline", first))  # retry delay: the run already failed
    second = h.fire("retry")
    assert unchanged(h.fire("deadline", first))  # attempt 1 is superseded
    h.ok(0)
    assert unchanged(h.fire("deadline", second))  # already done
    assert h.step(0).failures == 1


def test_claim_lost_counts_as_failure_and_redispatches() -> None:
    """A claim deleted without a result is a retryable failure; the retry dispatches attempt+1."""
    h = Harness(build(), FakeRoute("a"))
    tr = h.apply(ClaimLost(0, RUN, 1))
    st = h.step(0)
    assert st.failures == 1 and "lost its claim" in (st.error or "")
    assert tr.dispatch == [] and timer(tr, "retry")[1] == Timer(0, RUN, 1, "retry")
    assert h.fire("retry").dispatch == [Dispatch(0, RUN, 2, "a")]


def test_claim_lost_after_failure_result_is_not_double_counted() -> None:
    """The claim deletion that follows a failure result (same txn) is ignored: retry_at is set."""
    h = Harness(build(), FakeRoute("a"))
    h.fail(0)
    assert unchanged(h.apply(ClaimLost(0, RUN, 1)))
    assert h.step(0).failures == 1


def test_claim_lost_of_superseded_or_finished_run_is_ignored() -> None:
    """ClaimLost for an older attempt, or after the step succeeded, changes nothing."""
    h = Harness(build(), FakeRoute("a"))
    h.apply(ClaimLost(0, RUN, 1))
    h.fire("retry")
    assert unchanged(h.apply(ClaimLost(0, RUN, 1)))
    h.ok(0)
    assert unchanged(h.apply(ClaimLost(0, RUN, 2)))
    assert h.step(0).failures == 1


# -- late and duplicate results ----------------------------------------------------------


def test_late_success_of_superseded_attempt_is_accepted() -> None:
    """A success of attempt 1 after attempt 2 was dispatched completes the step (its effect happened)."""
    h = Harness(build(), FakeRoute("a"))
    h.apply(ClaimLost(0, RUN, 1))
    h.fire("retry")
    tr = h.ok(0, 1)
    assert h.step(0).state == "done" and h.step(0).result == "whizorch/run/a/t-1/0/run-1"
    assert tr.delete_tasks == [("a", 0)]  # the pending attempt-2 task goes
    assert tr.dispatch == [Dispatch(1, RUN, 1, "a")]


def test_late_success_during_retry_delay_clears_retry_state() -> None:
    """A superseded success landing in a retry delay leaves no retry_at behind; the retry timer then does nothing."""
    h = Harness(build(), FakeRoute("a"))
    h.apply(ClaimLost(0, RUN, 1))
    h.fire("retry")
    h.fail(0)  # attempt 2 failed: retry pending
    retry_tr = h.tr
    h.ok(0, 1)
    assert h.step(0).state == "done" and h.step(0).retry_at is None
    assert unchanged(h.fire("retry", retry_tr))


def test_late_success_records_the_region_that_ran_it() -> None:
    """A success reported from another region moves the step there (its compensation goes where the effect is)."""
    route = FakeRoute("a", "b", failover={"a": ["b"]})
    h = Harness(build(), route)
    h.apply(route.set("b"))
    assert h.step(0).region == "b"
    tr = h.ok(0, 1, region="a")
    assert h.step(0).region == "a"
    assert tr.delete_tasks == [("b", 0)]


def test_late_failure_of_superseded_attempt_is_ignored() -> None:
    """A failure of attempt 1 after attempt 2 was dispatched changes nothing: the newer run decides."""
    h = Harness(build(), FakeRoute("a"))
    h.apply(ClaimLost(0, RUN, 1))
    h.fire("retry")
    assert unchanged(h.fail(0, 1))
    assert (h.step(0).failures, h.step(0).run) == (1, 2)


def test_duplicate_results_are_ignored() -> None:
    """The same success or failure delivered twice is applied once (no double step, no double count)."""
    h = Harness(build(), FakeRoute("a"))
    h.fail(0)
    assert unchanged(h.fail(0, 1))
    assert h.step(0).failures == 1
    h.fire("retry")
    h.ok(0)
    assert unchanged(h.ok(0, 2))
    assert h.step(1).run == 1


def test_events_on_a_final_record_are_ignored() -> None:
    """Once completed/compensated/failed, no event changes the record or yields effects."""
    route = FakeRoute("a", "b")
    h = Harness(build(1), route)
    h.ok(0)
    before = h.rec.to_json()
    for ev in [
        Result(0, RUN, 1, False, "k", "late", True),
        Result(0, RUN, 1, True, "k"),
        ClaimLost(0, RUN, 1),
        Cancel(),
        route.set("b"),
        Timer(0, RUN, 1, "deadline"),
        Timer(0, RUN, 1, "retry"),
        Timer(0, RUN, 1, "no_region"),
    ]:
        assert unchanged(h.apply(ev, at=T0 + 99))
    assert h.rec.to_json() == before


@pytest.mark.parametrize(
    "event",
    [
        Result(3, RUN, 1, True, "k"),
        Result(-1, RUN, 1, True, "k"),
        Result(0, "bogus", 1, True, "k"),
        ClaimLost(-1, RUN, 1),
        Timer(9, RUN, 1, "deadline"),
    ],
)
def test_events_for_unknown_steps_or_kinds_are_ignored(event: Any) -> None:
    """An event naming no step of this saga (bad index, -1, unknown kind) is dropped, not misapplied."""
    h = Harness(build(3), FakeRoute("a"))
    before = h.rec.to_json()
    assert unchanged(h.apply(event))
    assert h.rec.to_json() == before


# -- cancel ------------------------------------------------------------------------------


def test_cancel_while_step_runs_waits_then_compensates() -> None:
    """Cancel during a run only flags; the run's success then compensates everything done, status compensated."""
    h = Harness(build(3), FakeRoute("a"))
    h.ok(0)
    tr = h.apply(Cancel())
    assert tr.changed and tr.dispatch == [] and tr.delete_tasks == []
    assert h.rec.cancel_requested and h.rec.status == "running"
    assert h.ok(1).dispatch == [Dispatch(1, COMPENSATE, 1, "a")]
    assert h.rec.status == "compensating"
    h.ok(1, kind=COMPENSATE)
    h.ok(0, kind=COMPENSATE)
    assert h.rec.status == "compensated"
    assert "cancelled" in (h.rec.error or "")
    assert [s.state for s in h.rec.steps] == ["compensated", "compensated", "skipped"]


def test_cancel_then_run_failure_does_not_retry() -> None:
    """After a cancel, a failing run is not retried: the saga compensates, error names the cancel and the failure."""
    h = Harness(build(3), FakeRoute("a"))
    h.ok(0)
    h.apply(Cancel())
    tr = h.fail(1, retryable=True)
    assert [t for _, t in tr.timers if t.reason == "retry"] == []
    assert tr.dispatch == [Dispatch(0, COMPENSATE, 1, "a")]
    assert h.rec.error == "cancelled; step 's1' failed: boom"


def test_cancel_during_retry_delay_compensates_at_once() -> None:
    """Cancel while a step waits out its retry delay stops it and compensates now; the retry never runs."""
    h = Harness(build(3), FakeRoute("a"))
    h.ok(0)
    h.fail(1)
    retry_tr = h.tr
    tr = h.apply(Cancel())
    assert tr.dispatch == [Dispatch(0, COMPENSATE, 1, "a")]
    assert h.step(1).state == "failed" and h.step(1).retry_at is None
    assert h.rec.error == "cancelled"
    assert unchanged(h.fire("retry", retry_tr))


def test_cancel_between_steps_compensates_at_once() -> None:
    """Cancel while the next step waits for a region compensates the done steps at once."""
    route = FakeRoute("a")
    h = Harness(build(3), route)
    route.up = set()
    tr = h.ok(0)  # step 1 finds no region
    no_region = timer(tr, "no_region")
    assert h.step(1).waiting_region
    tr = h.apply(Cancel())
    assert h.step(1).state == "skipped" and not h.step(1).waiting_region
    assert h.step(0).waiting_region  # its compensation now waits for a region instead
    route.up = {"a"}
    h.apply(route.set("a"))
    assert h.tr.dispatch == [Dispatch(0, COMPENSATE, 1, "a")]
    assert unchanged(h.apply(no_region[1], at=no_region[0]))  # the skipped step's wait is over


def test_cancel_during_compensation_only_flags() -> None:
    """Cancel while compensating changes nothing but the flag; the original reason stays."""
    h = Harness(build(2), FakeRoute("a"))
    h.ok(0)
    h.fail(1, retryable=False)
    tr = h.apply(Cancel())
    assert tr.changed and tr.dispatch == [] and h.rec.cancel_requested
    assert h.rec.error == "step 's1' failed: boom"
    assert unchanged(h.apply(Cancel()))


# -- regions and failover ----------------------------------------------------------------


def test_region_down_fails_step_over_to_target() -> None:
    """The step's region leaving: failover {step, from, to, reason} recorded, attempt+1 in the target region."""
    route = FakeRoute("a", "b", "c", failover={"a": ["c", "b"]})
    h = Harness(build(), route)
    h.ok(0)
    h.now = T0 + 5
    tr = h.apply(route.set("b", "c"))
    entry = {"step": 1, "from": "a", "to": "c", "reason": "region down", "at": T0 + 5}
    assert tr.failovers == [entry] and h.rec.failovers == [entry]
    assert tr.dispatch == [Dispatch(1, RUN, 2, "c")]
    assert ("a", 1) in tr.delete_tasks
    assert tr.timers == [(T0 + 5 + DEADLINE, Timer(1, RUN, 2, "deadline"))]
    st = h.step(1)
    assert (st.region, st.regions, st.failures) == ("c", ["a", "c"], 0)
    assert h.rec.regions == ["a", "c"]
    assert route.failover_calls == [("s1", "a")]
    assert "failover" in events(h.rec)


def test_region_change_elsewhere_is_ignored() -> None:
    """Losing a region no step runs in changes nothing."""
    route = FakeRoute("a", "b")
    h = Harness(build(), route)
    assert unchanged(h.apply(route.set("a")))


def test_failover_with_nowhere_to_go_leaves_the_task() -> None:
    """No target for a dead region: nothing happens now; the step's deadline still guards it."""
    route = FakeRoute("a")
    h = Harness(build(), route)
    first = h.tr
    assert unchanged(h.apply(route.set()))
    h.fire("deadline", first)
    assert h.step(0).failures == 1


def test_max_failovers_reached_fails_the_step() -> None:
    """With the failover budget spent, a dead region fails the step (no retry) and the saga compensates."""
    route = FakeRoute("a", "b", "c")
    h = Harness(build(max_failovers=1), route)
    h.ok(0)
    h.apply(route.set("b", "c"))  # failover 1: a -> b
    assert h.step(1).region == "b"
    tr = h.apply(route.set("c"))
    assert h.step(1).state == "failed"
    assert "max_failovers=1" in (h.rec.error or "")
    assert tr.dispatch == [Dispatch(0, COMPENSATE, 1, "c")]  # step 0 ran in dead "a": compensation fails over
    assert ("b", 1) in tr.delete_tasks


def test_deployment_cap_on_failovers_applies_over_the_saga_type() -> None:
    """Settings.max_failovers caps a saga type's larger max_failovers (the lower of the two wins)."""
    route = FakeRoute("a", "b", "c")
    h = Harness(build(max_failovers=5), route, Settings(dispatch_grace_s=5.0, max_failovers=1))
    h.ok(0)
    h.apply(route.set("b", "c"))  # failover 1: a -> b
    h.apply(route.set("c"))
    assert h.step(1).state == "failed"
    assert "max_failovers=1" in (h.rec.error or "")
    assert Settings(max_failovers=9).failover_limit(build(max_failovers=2)) == 2
    assert Settings().failover_limit(build(max_failovers=2)) == 2


def test_max_failovers_zero_fails_on_first_region_loss() -> None:
    """max_failovers=0 disables failover for runs."""
    route = FakeRoute("a", "b")
    h = Harness(build(max_failovers=0), route)
    h.apply(route.set("b"))
    assert h.step(0).state == "failed" and h.rec.status == "compensated"
    assert h.rec.failovers == []


def test_retry_after_region_died_is_a_recorded_failover() -> None:
    """A retry whose region died during the delay moves by the failover policy and is recorded as a failover."""
    route = FakeRoute("a", "b", "c", failover={"a": ["c"]})
    h = Harness(build(), route)
    h.apply(ClaimLost(0, RUN, 1))
    h.apply(route.set("b", "c"))  # skipped: the step is in its retry delay
    assert h.rec.failovers == []
    tr = h.fire("retry")
    assert tr.dispatch == [Dispatch(0, RUN, 2, "c")]
    assert [(f["from"], f["to"]) for f in h.rec.failovers] == [("a", "c")]


def test_retry_after_region_died_respects_max_failovers() -> None:
    """A retry that would need a failover past the budget fails the step instead."""
    route = FakeRoute("a", "b")
    h = Harness(build(max_failovers=0), route)
    h.fail(0)
    route.up = {"b"}
    tr = h.fire("retry")
    assert tr.dispatch == [] and h.step(0).state == "failed"
    assert "max_failovers=0" in (h.rec.error or "")


def test_no_healthy_region_waits_then_fails() -> None:
    """No region for a step: waiting_region and a no_region timer; the timer fails the step."""
    h = Harness(build(), FakeRoute())
    tr = h.tr
    assert tr.dispatch == []
    assert tr.timers == [(T0 + 30.0, Timer(0, RUN, 0, "no_region"))]
    st = h.step(0)
    assert (st.state, st.waiting_region, st.run) == ("pending", True, 0)
    assert "waiting_for_region" in events(h.rec)
    h.fire("no_region")
    assert st.state == "failed" and not st.waiting_region
    assert h.rec.status == "compensated"
    assert "no healthy region" in (h.rec.error or "")


def test_region_appearing_while_waiting_dispatches() -> None:
    """A region arriving during the wait dispatches the step; the old no_region timer is then ignored."""
    route = FakeRoute()
    h = Harness(build(), route)
    no_region = h.tr
    tr = h.apply(route.set("b"), at=T0 + 3)
    assert tr.dispatch == [Dispatch(0, RUN, 1, "b")]
    assert not h.step(0).waiting_region
    assert unchanged(h.fire("no_region", no_region))


def test_unhelpful_region_change_keeps_the_wait_clock() -> None:
    """A region change that offers no usable region neither re-arms the no_region timer nor restarts the wait."""
    route = FakeRoute()
    h = Harness(build(), route)
    first = h.tr
    tr = h.apply(route.set("x"), at=T0 + 10)  # healthy, but not one this step may use
    assert tr.timers == [] and tr.dispatch == []
    assert h.step(0).dispatched_at == T0
    h.fire("no_region", first)
    assert h.step(0).state == "failed"


def test_stale_no_region_timer_does_not_cut_a_later_wait_short() -> None:
    """A no_region timer from an earlier, finished wait does not fail the step's next wait."""
    route = FakeRoute(failover={"a": []})
    h = Harness(build(), route)
    first = h.tr  # wait 1: no_region at T0+30
    h.apply(route.set("a"), at=T0 + 5)
    h.fail(0)
    route.up = set()
    second = h.fire("retry")  # wait 2 starts at T0+6
    assert h.step(0).waiting_region
    assert unchanged(h.fire("no_region", first))
    assert h.step(0).waiting_region
    h.fire("no_region", second)
    assert h.step(0).state == "failed"


def test_retry_waiting_for_region_resumes_with_failover() -> None:
    """A retry that found no region waits; a region appearing later takes it, recorded as a failover."""
    route = FakeRoute("a", failover={"a": ["b"]})
    h = Harness(build(), route)
    h.fail(0)
    route.up = set()
    h.fire("retry")
    assert h.step(0).waiting_region
    tr = h.apply(route.set("b"))
    assert tr.dispatch == [Dispatch(0, RUN, 2, "b")]
    assert [(f["from"], f["to"]) for f in h.rec.failovers] == [("a", "b")]


def test_compensation_moves_when_its_region_is_down() -> None:
    """A compensation whose step ran in a dead region is dispatched by failover and recorded."""
    route = FakeRoute("a", "b", failover={"a": ["b"]})
    h = Harness(build(2), route)
    h.ok(0)  # s0 done in a; s1 dispatched in a
    h.apply(route.set("b"))  # s1 fails over to b
    tr = h.fail(1, retryable=False)
    assert tr.dispatch == [Dispatch(0, COMPENSATE, 1, "b")]
    assert h.rec.failovers[-1]["reason"] == "region down (compensation)"
    assert h.step(0).regions == ["a", "b"]


def test_compensation_fails_over_past_max_failovers() -> None:
    """max_failovers bounds forward progress only: a compensation whose region dies still moves."""
    route = FakeRoute("a", "b", failover={"a": ["b"]})
    h = Harness(build(2, max_failovers=0), route)
    h.ok(0)
    h.fail(1, retryable=False)
    tr = h.apply(route.set("b"))
    assert tr.dispatch == [Dispatch(0, COMPENSATE, 2, "b")]
    assert h.step(0).state == "compensating" and h.step(0).comp_failures == 0
    h.ok(0, kind=COMPENSATE)
    assert h.rec.status == "compensated"


def test_compensation_with_no_region_gives_up_after_timeout() -> None:
    """A compensation with no healthy region waits, then gives up: the saga ends failed with the reason."""
    route = FakeRoute("a")
    h = Harness(build(2), route)
    h.ok(0)
    route.up = set()  # the router knows before the RegionsChanged event is applied
    tr = h.fail(1, retryable=False)
    assert tr.dispatch == [] and h.step(0).waiting_region
    assert timer(tr, "no_region")[1] == Timer(0, COMPENSATE, 0, "no_region")
    h.fire("no_region")
    assert h.step(0).state == "comp_failed" and "no healthy region" in (h.step(0).comp_error or "")
    assert h.rec.status == "failed"
    assert h.rec.error == "step 's1' failed: boom; compensation gave up for s0"


@pytest.mark.parametrize("claim_first", [False, True], ids=["region-event-first", "claim-lost-first"])
def test_spec_scenario_region_fails_after_two_steps(claim_first: bool) -> None:
    """3 steps; region A dies after 2 completed: step 3 runs in B, saga completes, both regions listed, failover flagged."""
    route = FakeRoute("A", "B", order=["A", "B"], failover={"A": ["B"]})
    h = Harness(build(3), route)
    h.ok(0, region="A")
    h.ok(1, region="A")
    assert h.step(2).region == "A"
    # the worker's lease expiry deletes its claim and its region key together; the
    # orchestrator may see either first
    if claim_first:
        h.apply(ClaimLost(2, RUN, 1))
        h.apply(route.set("B"))
        h.fire("retry")
    else:
        h.apply(route.set("B"))
    assert h.tr.dispatch == [Dispatch(2, RUN, 2, "B")]
    h.ok(2, region="B")
    rec = h.rec
    assert rec.status == "completed"
    assert rec.regions == ["A", "B"]
    assert [(f["step"], f["from"], f["to"]) for f in rec.failovers] == [(2, "A", "B")]
    assert [s.region for s in rec.steps] == ["A", "A", "B"]


def test_a_wait_for_a_region_that_becomes_a_wait_for_a_worker_gets_the_longer_limit() -> None:
    """A step waiting for a region (none healthy) whose wait becomes one for a worker
    with its version (a region came, its workers lack the version) is noted again, and
    only the worker limit fails it: the region limit's timer passes it by."""
    settings = Settings(dispatch_grace_s=5.0, no_region_timeout_s=30.0, no_worker_timeout_s=600.0)
    route = FakeRoute()
    h = Harness(build(2), route, settings)
    assert h.step(0).waiting_region and h.step(0).waiting_for == "region"
    region_limit = timer(h.tr, "no_region")
    route.lacking = "v9"
    tr = h.apply(RegionsChanged(frozenset({"a"})), at=T0 + 1)
    assert h.step(0).waiting_for == "worker" and h.step(0).dispatched_at == T0
    assert [e for e in events(h.rec) if e.startswith("waiting_for")] == ["waiting_for_region", "waiting_for_worker"]
    worker_limit = timer(tr, "no_region")
    assert worker_limit[0] == T0 + 600.0
    assert unchanged(h.apply(region_limit[1], at=region_limit[0]))  # the region limit does not fail it
    h.apply(worker_limit[1], at=worker_limit[0])
    assert h.step(0).state == "failed" and "version 'v9'" in (h.step(0).error or "")
    assert h.rec.status == "compensated"
