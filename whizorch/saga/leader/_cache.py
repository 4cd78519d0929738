"""A shard leader's cache of the sagas it drives, and what it builds from it.

Internal to the leader: the cached saga, its mailbox items, the task payload
of a dispatch (earlier outputs inline while small, by reference beyond), the failed
record written for input that cannot become a saga.
"""

from __future__ import annotations

import asyncio
from typing import Any

import attrs

from whizorch.etcd import KeyValue
from whizorch.saga import _machine as m
from whizorch.saga._keys import Keys
from whizorch.saga._model import FAILED, SagaRecord, StepKind, TaskPayload
from whizorch.saga._spec import SagaSpec

__all__ = [
    "EVENT_NAMES",
    "NO_INPUT",
    "Conflict",
    "Fail",
    "Item",
    "LeaderSaga",
    "LeadershipLost",
    "ResultArrived",
    "Task",
    "TaskGone",
    "active_tasks",
    "describe",
    "failed_record",
    "task_payload",
]

# earlier outputs a task carries inline, in all; the rest go by reference (result keys)
INLINE_OUTPUTS_BYTES = 16 * 1024

NO_INPUT: Any = object()
"""``LeaderSaga.input`` of a saga whose submission could not be decoded: none is stored."""


class LeadershipLost(Exception):
    """Internal: the fence refused a write, or the session/leadership is gone."""


@attrs.define
class LeaderSaga:
    """The leader's cache of one saga."""

    record: SagaRecord
    mod_revision: int
    definition: SagaSpec | None
    """The definition the saga is pinned to (None: unknown, the saga is failed)."""
    input: Any = None
    outputs: dict[str, Any] = attrs.Factory(dict)
    output_sizes: dict[str, int] = attrs.Factory(dict)
    lock: asyncio.Lock = attrs.Factory(asyncio.Lock)
    tasks: dict[int, Task] = attrs.Factory(dict)
    """The task of each step's active run as etcd has it (put by this leader, or found
    by its rebuild): what the next commit diffs against."""
    live: bool = False
    """The saga has its entry in the shard's in-flight index (``<ns>/live/``): the
    write that makes it final deletes it."""


@attrs.frozen
class Task:
    """One run's task: its key, and where it is (region, worker lease in hex)."""

    key: bytes
    region: str
    lease: str
    kind: StepKind
    attempt: int


def active_tasks(keys: Keys, rec: SagaRecord) -> dict[int, Task]:
    """The task each step's active run should have: a run dispatched or compensating,
    not waiting out a retry delay or for a region, on the worker the record names.
    A final saga has none (its tasks are withdrawn)."""
    out: dict[int, Task] = {}
    if rec.is_final:
        return out
    for index, st in enumerate(rec.steps):
        if st.retry_at is not None or st.waiting_region or st.region is None or st.worker is None:
            continue
        if st.state == "dispatched":
            kind, attempt = m.RUN, st.run
        elif st.state == "compensating":
            kind, attempt = m.COMPENSATE, st.comp_run
        else:
            continue
        out[index] = Task(keys.task(st.region, st.worker, rec.id, index, kind, attempt), st.region, st.worker, kind, attempt)
    return out


@attrs.frozen
class TaskGone:
    """Internal mailbox item: the worker holding a step's task is gone (its lease
    ended), or no worker could take it; ``lease`` "" when none was found."""

    step: int
    kind: StepKind
    attempt: int
    lease: str
    drained: bool = False
    """The worker left by draining (not a crash): its unstarted runs are put on another
    worker with the same attempt, no retry spent."""


@attrs.frozen
class Fail:
    """Internal mailbox item: the saga cannot move on (a write etcd refuses for good)."""

    reason: str


@attrs.frozen
class ResultArrived:
    """Internal mailbox item: a result key the watch delivered, checked and applied
    in the saga's order (after the write that dispatched its run)."""

    result: m.Result
    kv: KeyValue


Item = tuple["m.Event | Fail | TaskGone | ResultArrived | None", "KeyValue | None"]


def task_payload(entry: LeaderSaga, d: m.Dispatch) -> TaskPayload:
    """The task for dispatch ``d`` of a saga the leader drives."""
    rec = entry.record
    definition = entry.definition
    assert definition is not None
    step = definition.steps[d.step]
    # earlier outputs ride along while small; larger ones go by reference, so a
    # task (and the txn that writes it) stays bounded however many steps came before
    inline: dict[str, Any] = {}
    refs: dict[str, str] = {}
    budget = INLINE_OUTPUTS_BYTES
    for st in rec.steps:
        if st.name not in entry.outputs:
            continue
        size = entry.output_sizes.get(st.name, 0)
        if size <= budget or st.result is None:
            inline[st.name] = entry.outputs[st.name]
            budget -= size
        else:
            refs[st.name] = st.result
    return TaskPayload(
        saga_id=rec.id,
        saga=rec.saga,
        txid=rec.txid,
        step=d.step,
        step_name=step.name,
        kind=d.kind,
        attempt=d.attempt,
        region=d.region,
        input=entry.input,
        outputs=inline,
        timeout_s=step.timeout_s if d.kind == m.RUN else step.compensation_timeout_s,
        trace=dict(rec.trace),
        output_refs=refs,
        version=definition.version,
    )



EVENT_NAMES: dict[type, str] = {
    m.Result: "result",
    m.ClaimLost: "claim_lost",
    m.Cancel: "cancel",
    m.RegionsChanged: "regions",
    m.Timer: "timer",
}


def describe(event: m.Event | Fail | TaskGone | ResultArrived | None) -> str:
    if event is None:
        return "the submission"
    if isinstance(event, ResultArrived):
        event = event.result
    if isinstance(event, TaskGone):
        return f"the loss of step {event.step}'s worker"
    if isinstance(event, m.Result):
        return f"the {event.kind} result of step {event.step} (attempt {event.attempt})"
    return f"a {EVENT_NAMES.get(type(event), type(event).__name__)} event"


class Conflict(Exception):
    """Internal: the record's mod_revision moved (or the outcome is unknown): reload."""


def failed_record(saga_id: str, saga: str, txid: int, reason: str, now: float) -> SagaRecord:
    rec = SagaRecord(id=saga_id, saga=saga, txid=txid, status=FAILED, steps=[], created=now, updated=now, finished=now, error=reason)
    rec.note(now, "failed", error=reason)
    return rec

