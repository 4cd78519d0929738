"""The saga state machine: record + event -> new record + task writes + timers.

Its inputs and outputs (events, ``Transition``, ``Route``, ``Settings``) are defined in
``_transition.py`` and re-exported here: callers speak to the machine.

Pure: no IO, no clock (``now`` is passed in), no randomness beyond the retry policy's
jitter. The orchestrator applies each transition as one fenced etcd txn, so a crash
between transitions loses nothing, and a new leader resumes from the last record.
"""

from __future__ import annotations

from whizorch.saga._model import (
    COMPENSATE,
    COMPENSATED,
    COMPENSATING,
    COMPLETED,
    FAILED,
    RUN,
    RUNNING,
    SagaRecord,
    StepKind,
    StepState,
)
from whizorch.saga._spec import SagaSpec, StepSpec
from whizorch.saga._transition import (
    Cancel,
    ClaimLost,
    Dispatch,
    Event,
    RegionsChanged,
    Result,
    Route,
    Settings,
    Timer,
    Transition,
    WaitFor,
)

__all__ = [
    "COMPENSATE",
    "RUN",
    "Cancel",
    "ClaimLost",
    "Dispatch",
    "Event",
    "RegionsChanged",
    "Result",
    "Route",
    "Settings",
    "Timer",
    "Transition",
    "WaitFor",
    "adopt",
    "apply",
]

# -- the machine --------------------------------------------------------------------------


def adopt(
    saga: SagaSpec, *, saga_id: str, txid: int, now: float, route: Route, settings: Settings, trace: dict[str, str], term: int
) -> tuple[SagaRecord, Transition]:
    """A new record for a submission, with its first step dispatched."""
    rec = SagaRecord(
        id=saga_id,
        saga=saga.name,
        version=saga.version,
        txid=txid,
        status=RUNNING,
        steps=[StepState(name=s.name) for s in saga.steps],
        created=now,
        updated=now,
        trace=dict(trace),
        leader_term=term,
    )
    rec.note(now, "adopted", txid=txid, version=saga.version)
    tr = Transition(changed=True)
    _dispatch_run(rec, saga, 0, now, route, settings, tr)
    return rec, tr


def apply(
    rec: SagaRecord, saga: SagaSpec, event: Event, *, now: float, route: Route, settings: Settings
) -> Transition:
    """Apply ``event`` to ``rec`` in place; return the effects."""
    tr = Transition()
    if rec.is_final:
        return tr  # late duplicates: nothing is left to drive
    if isinstance(event, (Result, ClaimLost, Timer)) and (
        event.kind not in (RUN, COMPENSATE) or not 0 <= event.step < len(rec.steps)
    ):
        return tr  # not about this saga's steps (a foreign or corrupt key): -1 must not mean "last"
    if isinstance(event, Result):
        _on_result(rec, saga, event, now, route, settings, tr)
    elif isinstance(event, ClaimLost):
        st = rec.steps[event.step]
        if st.retry_at is not None:
            return tr  # the run already failed (its result deleted the claim): retry is set
        _on_failure(
            rec, saga, event.step, event.kind, event.attempt, "worker lost its claim (died or lease expired)",
            True, now, route, settings, tr,
        )
    elif isinstance(event, Cancel):
        if not rec.cancel_requested:
            rec.cancel_requested = True
            rec.note(now, "cancel_requested")
            tr.changed = True
            if rec.status == RUNNING and not _run_in_flight(rec):
                # between runs (or waiting out a retry delay or for a region): no new run
                # starts; a step whose runs all failed has nothing to undo
                for index, st in enumerate(rec.steps):
                    if st.state == "dispatched":
                        st.state = "failed"
                        st.ended = now
                        st.retry_at = None
                        st.waiting_region = False
                        st.waiting_for = None
                        rec.note(now, "retry_cancelled", step=index)
                _start_compensation(rec, saga, "cancelled", now, route, settings, tr)
    elif isinstance(event, RegionsChanged):
        _on_regions(rec, saga, event, now, route, settings, tr)
    elif isinstance(event, Timer):
        _on_timer(rec, saga, event, now, route, settings, tr)
    if tr.changed:
        rec.updated = now
    return tr


def _run_in_flight(rec: SagaRecord) -> bool:
    """A run was dispatched and its outcome is not known yet (not in a retry delay)."""
    return any(s.state == "dispatched" and s.retry_at is None and not s.waiting_region for s in rec.steps)


def _dispatch_run(
    rec: SagaRecord, saga: SagaSpec, index: int, now: float, route: Route, settings: Settings, tr: Transition,
    *, region: str | None = None,
) -> None:
    st = rec.steps[index]
    step = saga.steps[index]
    rec.step = index
    target = region
    if target is None and st.run > 0 and st.region is not None:
        # a retry (or a wait after one) stays in its region; if that region died this
        # is a failover like any other: same policy, same limit, same record
        if route.healthy(st.region):
            target = st.region
        elif len(rec.failovers) >= settings.failover_limit(saga):
            _give_up_run(
                rec, saga, index, f"region {st.region!r} down and max_failovers={settings.failover_limit(saga)} reached",
                now, route, settings, tr,
            )
            return
        else:
            target = route.failover(step, failed=st.region)
            if target is not None:
                _record_failover(rec, index, st.region, target, "region down", now, tr)
    elif target is None:
        target = route.pick(step)
        if target is not None and step.region is not None and target != step.region:
            _note_unmet(rec, step, target, route.why_elsewhere(step), now, tr)
    if target is None:
        _wait_for_region(rec, st, step, RUN, st.run, now, route, settings, tr)
        return
    st.run += 1
    st.state = "dispatched"
    st.region = target
    st.regions.append(target)
    st.dispatched_at = now
    st.retry_at = None
    st.waiting_region = False
    st.waiting_for = None
    if st.started is None:
        st.started = now
    tr.changed = True
    tr.dispatch.append(Dispatch(index, RUN, st.run, target))
    rec.note(now, "dispatched", step=index, region=target, attempt=st.run)
    if step.timeout_s is not None:
        tr.timers.append((now + step.timeout_s + settings.dispatch_grace_s, Timer(index, RUN, st.run, "deadline")))


def _dispatch_compensation(
    rec: SagaRecord, saga: SagaSpec, index: int, now: float, route: Route, settings: Settings, tr: Transition
) -> None:
    st = rec.steps[index]
    step = saga.steps[index]
    target = st.region if st.region and route.healthy(st.region) else None
    if target is None:
        target = route.failover(step, failed=st.region) if st.region else route.pick(step)
        if target is not None and st.region is not None:
            _record_failover(rec, index, st.region, target, "region down (compensation)", now, tr)
    if target is None:
        _wait_for_region(rec, st, step, COMPENSATE, st.comp_run, now, route, settings, tr)
        return
    st.comp_run += 1
    st.state = "compensating"
    if target not in st.regions:
        st.regions.append(target)
    st.region = target
    st.dispatched_at = now
    st.retry_at = None
    st.waiting_region = False
    st.waiting_for = None
    tr.changed = True
    tr.dispatch.append(Dispatch(index, COMPENSATE, st.comp_run, target))
    rec.note(now, "compensation_dispatched", step=index, region=target, attempt=st.comp_run)
    timeout = step.compensation_timeout_s
    if timeout is not None:
        tr.timers.append((now + timeout + settings.dispatch_grace_s, Timer(index, COMPENSATE, st.comp_run, "deadline")))


def _wait_for_region(
    rec: SagaRecord, st: StepState, step: StepSpec, kind: StepKind, run: int, now: float, route: Route,
    settings: Settings, tr: Transition,
) -> None:
    why, reason = route.why_not(step)
    if st.waiting_region and st.waiting_for == why:
        return  # still waiting for the same thing: its timer stands
    if not st.waiting_region:
        st.waiting_region = True
        st.dispatched_at = now  # the wait's start: its limit counts from here
    # a new wait, or the same wait for something else now (a region came whose workers
    # lack the saga's version): the limit is the one of what it waits for now
    st.waiting_for = why
    rec.note(now, f"waiting_for_{why}", step=step.index, kind=kind, reason=reason)
    tr.changed = True
    tr.timers.append(((st.dispatched_at or now) + wait_limit_s(st, settings), Timer(step.index, kind, run, "no_region")))


def wait_limit_s(st: StepState, settings: Settings) -> float:
    """How long a step waiting for a region (or a worker) may wait in all."""
    return settings.no_worker_timeout_s if st.waiting_for == "worker" else settings.no_region_timeout_s


def _note_unmet(rec: SagaRecord, step: StepSpec, target: str, reason: str, now: float, tr: Transition) -> None:
    entry = {"step": step.index, "wanted": step.region, "to": target, "reason": reason}
    rec.note(now, "region_preference_unmet", **entry)
    tr.unmet.append(entry)


def _current_run(st: StepState, kind: StepKind) -> int:
    return st.run if kind == RUN else st.comp_run


def _on_result(
    rec: SagaRecord, saga: SagaSpec, ev: Result, now: float, route: Route, settings: Settings, tr: Transition
) -> None:
    st = rec.steps[ev.step]
    if ev.kind == RUN:
        if st.state != "dispatched":
            return  # late or duplicate
        if not ev.ok and ev.attempt != st.run:
            return  # a failure of a superseded run: the newer run decides
        if ev.ok:
            # a success of any run of the current step counts: its effect happened
            if st.region:
                tr.delete_tasks.append((st.region, ev.step))
            st.state = "done"
            st.result = ev.key
            st.ended = now
            st.error = st.error_type = st.traceback = None
            st.retry_at = None  # a superseded run's success may land in a retry delay
            st.waiting_region = False
            st.waiting_for = None
            if ev.region and ev.region != st.region:
                st.region = ev.region
            tr.changed = True
            rec.note(now, "step_done", step=ev.step, region=ev.region or st.region, attempt=ev.attempt)
            _advance(rec, saga, ev.step, now, route, settings, tr)
            return
        _on_failure(
            rec, saga, ev.step, RUN, ev.attempt, ev.error or "failed", ev.retryable, now, route, settings, tr,
            error_type=ev.error_type, traceback=ev.traceback,
        )
    else:
        if st.state != "compensating":
            return
        if not ev.ok and ev.attempt != st.comp_run:
            return
        if ev.ok:
            if st.region:
                tr.delete_tasks.append((st.region, ev.step))
            st.state = "compensated"
            st.comp_error = st.comp_error_type = st.comp_traceback = None
            # a superseded run's success may land while a retry waits (for its delay
            # or for a region): that wait is over, and its timers must not fail the step
            st.retry_at = None
            st.waiting_region = False
            st.waiting_for = None
            tr.changed = True
            rec.note(now, "compensated", step=ev.step, attempt=ev.attempt)
            _continue_compensation(rec, saga, now, route, settings, tr)
            return
        _on_failure(
            rec, saga, ev.step, COMPENSATE, ev.attempt, ev.error or "failed", ev.retryable, now, route, settings, tr,
            error_type=ev.error_type, traceback=ev.traceback,
        )


def _advance(rec: SagaRecord, saga: SagaSpec, done: int, now: float, route: Route, settings: Settings, tr: Transition) -> None:
    if rec.cancel_requested:
        _start_compensation(rec, saga, "cancelled", now, route, settings, tr)
        return
    if done + 1 < len(rec.steps):
        _dispatch_run(rec, saga, done + 1, now, route, settings, tr)
        return
    rec.status = COMPLETED
    rec.finished = now
    rec.note(now, "completed")


def _on_failure(
    rec: SagaRecord, saga: SagaSpec, index: int, kind: StepKind, attempt: int, error: str, retryable: bool,
    now: float, route: Route, settings: Settings, tr: Transition,
    *, error_type: str | None = None, traceback: str | None = None,
) -> None:
    st = rec.steps[index]
    step = saga.steps[index]
    expected_state = "dispatched" if kind == RUN else "compensating"
    if st.state != expected_state or attempt != _current_run(st, kind):
        return
    if st.retry_at is not None:
        return  # this run already failed (a duplicate result, or its claim/deadline after it)
    tr.changed = True
    policy = step.retry if kind == RUN else step.compensation_retry
    if kind == RUN:
        st.failures += 1
        st.error, st.error_type, st.traceback = error, error_type, traceback
        failures = st.failures
    else:
        st.comp_failures += 1
        st.comp_error, st.comp_error_type, st.comp_traceback = error, error_type, traceback
        failures = st.comp_failures
    rec.note(now, "run_failed" if kind == RUN else "compensation_failed", step=index, attempt=attempt, error=error[:500])
    if retryable and failures < policy.attempts and not (kind == RUN and rec.cancel_requested):
        delay = policy.delay_s(failures)
        st.retry_at = now + delay
        if st.region:
            tr.delete_tasks.append((st.region, index))
        tr.timers.append((now + delay, Timer(index, kind, attempt, "retry")))
        rec.note(now, "retry_scheduled", step=index, kind=kind, delay_s=round(delay, 3))
        return
    if kind == RUN:
        _give_up_run(rec, saga, index, error, now, route, settings, tr)
    else:
        if st.region:
            tr.delete_tasks.append((st.region, index))
        st.state = "comp_failed"
        rec.note(now, "compensation_gave_up", step=index, error=error[:500])
        _continue_compensation(rec, saga, now, route, settings, tr)


def _start_compensation(
    rec: SagaRecord, saga: SagaSpec, reason: str, now: float, route: Route, settings: Settings, tr: Transition
) -> None:
    rec.status = COMPENSATING
    rec.error = reason
    tr.changed = True
    rec.note(now, "compensating", reason=reason[:500])
    for st in rec.steps:
        if st.state == "pending":
            st.state = "skipped"
            st.waiting_region = False  # its no_region timer must not fail it later
            st.waiting_for = None
    _continue_compensation(rec, saga, now, route, settings, tr)


def _continue_compensation(rec: SagaRecord, saga: SagaSpec, now: float, route: Route, settings: Settings, tr: Transition) -> None:
    """Compensate the next completed step, last first; finish when none is left."""
    if any(s.state == "compensating" for s in rec.steps):
        return
    for index in range(len(rec.steps) - 1, -1, -1):
        st = rec.steps[index]
        if st.state != "done":
            continue
        if not saga.steps[index].compensable:
            st.state = "compensated"  # nothing to undo
            rec.note(now, "nothing_to_compensate", step=index)
            continue
        _dispatch_compensation(rec, saga, index, now, route, settings, tr)
        return
    failed = [s.name for s in rec.steps if s.state == "comp_failed"]
    rec.finished = now
    tr.changed = True
    if failed:
        rec.status = FAILED
        rec.error = f"{rec.error}; compensation gave up for {', '.join(failed)}"
        rec.note(now, "failed", error=rec.error[:500])
    else:
        rec.status = COMPENSATED
        rec.note(now, "compensated_all")


def _on_timer(rec: SagaRecord, saga: SagaSpec, ev: Timer, now: float, route: Route, settings: Settings, tr: Transition) -> None:
    st = rec.steps[ev.step]
    if ev.reason == "retry":
        if st.retry_at is None or now < st.retry_at - 1e-6 or ev.attempt != _current_run(st, ev.kind):
            return
        if ev.kind == RUN and st.state == "dispatched":
            _dispatch_run(rec, saga, ev.step, now, route, settings, tr)
        elif ev.kind == COMPENSATE and st.state == "compensating":
            _dispatch_compensation(rec, saga, ev.step, now, route, settings, tr)
    elif ev.reason == "deadline":
        if st.retry_at is not None or st.waiting_region or ev.attempt != _current_run(st, ev.kind):
            return
        _on_failure(
            rec, saga, ev.step, ev.kind, ev.attempt, "no result within the step timeout", True, now, route, settings, tr
        )
    elif ev.reason == "no_region":
        waiting_for = RUN if st.state in ("pending", "dispatched") else COMPENSATE
        if not st.waiting_region or ev.kind != waiting_for or ev.attempt != _current_run(st, ev.kind):
            return  # the wait this timer guarded is over (a later wait has its own timer)
        if now < (st.dispatched_at or now) + wait_limit_s(st, settings) - 1e-6:
            return  # the wait now has a longer limit (it waits for a worker, not a region)
        st.waiting_region = False
        st.waiting_for = None
        message = route.why_not(saga.steps[ev.step])[1]
        if ev.kind == RUN:
            rec.note(now, "no_region", step=ev.step)
            _give_up_run(rec, saga, ev.step, message, now, route, settings, tr)
        else:
            st.state = "comp_failed"
            st.comp_error = message
            rec.note(now, "no_region", step=ev.step, kind=COMPENSATE)
            _continue_compensation(rec, saga, now, route, settings, tr)
        tr.changed = True


def _give_up_run(
    rec: SagaRecord, saga: SagaSpec, index: int, error: str, now: float, route: Route, settings: Settings, tr: Transition
) -> None:
    """The step failed for good: compensate the steps before it."""
    st = rec.steps[index]
    if st.region:
        tr.delete_tasks.append((st.region, index))
    st.state = "failed"
    st.error = error
    st.ended = now
    st.retry_at = None
    st.waiting_region = False
    st.waiting_for = None
    tr.changed = True
    reason = f"step {st.name!r} failed: {error}"
    _start_compensation(rec, saga, f"cancelled; {reason}" if rec.cancel_requested else reason, now, route, settings, tr)


def _record_failover(rec: SagaRecord, index: int, src: str, dst: str, reason: str, now: float, tr: Transition) -> None:
    entry = {"step": index, "from": src, "to": dst, "reason": reason, "at": round(now, 4)}
    rec.failovers.append(entry)
    tr.failovers.append(entry)
    rec.note(now, "failover", step=index, **{"from": src, "to": dst}, reason=reason)


def _on_regions(
    rec: SagaRecord, saga: SagaSpec, ev: RegionsChanged, now: float, route: Route, settings: Settings, tr: Transition
) -> None:
    for index, st in enumerate(rec.steps):
        step = saga.steps[index]
        if st.waiting_region:
            # the flag stays up until a dispatch succeeds, so a failed attempt here
            # neither re-arms the no_region timer nor restarts the wait's clock
            if st.state == "compensating" or (rec.status == COMPENSATING and st.state == "done"):
                _dispatch_compensation(rec, saga, index, now, route, settings, tr)
            elif st.state in ("pending", "dispatched") and rec.status == RUNNING:
                _dispatch_run(rec, saga, index, now, route, settings, tr)
            continue
        if st.state not in ("dispatched", "compensating") or st.region is None or st.region in ev.healthy:
            continue
        if st.retry_at is not None:
            continue  # re-routed when the retry fires
        # the step's region died under it: move it. max_failovers bounds forward
        # progress only; a compensation always moves (as _dispatch_compensation does)
        if st.state == "dispatched" and len(rec.failovers) >= settings.failover_limit(saga):
            tr.delete_tasks.append((st.region, index))
            _on_failure(
                rec, saga, index, RUN, st.run,
                f"region {st.region!r} down and max_failovers={settings.failover_limit(saga)} reached", False,
                now, route, settings, tr,
            )
            continue
        target = route.failover(step, failed=st.region)
        if target is None:
            continue  # nowhere to go yet; the deadline timer still guards the step
        old = st.region
        tr.delete_tasks.append((old, index))
        _record_failover(rec, index, old, target, "region down", now, tr)
        tr.changed = True
        if st.state == "dispatched":
            _dispatch_run(rec, saga, index, now, route, settings, tr, region=target)
        else:
            st.state = "done"  # re-dispatch the compensation in the new region
            st.region = target
            _dispatch_compensation(rec, saga, index, now, route, settings, tr)

