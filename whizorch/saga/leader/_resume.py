"""Taking a shard over: read what is in flight (``_rebuild.py``), cache it, resume it.

A new term of a shard reads the shard at one revision, caches its sagas in flight,
feeds each what happened while nobody led (results recorded, a cancel asked), re-arms
its timers and puts runs whose worker died on a live worker; then it adopts the
submissions not adopted yet and withdraws tasks no active run owns. The term watches
from that revision on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from whizorch.errors import DecodeError
from whizorch.etcd import BatchRefused, Compare, KeyValue, Op
from whizorch.saga import _machine as m
from whizorch.saga._model import NewerRecordError, SagaRecord, decode_json
from whizorch.saga._spec import SagaSpec
from whizorch.saga._supervise import PERMANENT
from whizorch.saga.leader._cache import (
    Fail,
    LeaderSaga,
    LeadershipLost,
    ResultArrived,
    active_tasks,
)
from whizorch.saga.leader._events import learn_output, result_event, unknown_definition
from whizorch.saga.leader._rebuild import read_results, read_shard

if TYPE_CHECKING:
    from whizorch.saga.leader._term import ShardLeader

__all__ = ["take_over"]

log = logging.getLogger("whizorch.saga.orchestrator")

YIELD_EVERY = 200
"""Records a takeover decodes between two yields to the event loop: a shard with
thousands of sagas in flight must not hold the loop for seconds, since the session's
keepalives, the split-brain probe and the process's other shards run in it."""


async def take_over(term: ShardLeader) -> int:
    """Rebuild the term's view of its shard and resume every saga in flight; return
    the revision it was read at (the term handles what came after)."""
    env, keys = term.env, term.env.keys
    snap = await read_shard(env.client, keys, term.shard, env.shards)
    rev = snap.revision
    for kv in snap.quarantine:
        env.quarantine.learn(kv)
    tasks: dict[bytes, KeyValue] = {}
    for kv in snap.tasks:
        try:
            keys.task_key(kv.key)
            tasks[kv.key] = kv
        except DecodeError as exc:
            term.poison("task", kv, str(exc))
    specs: dict[tuple[str, str], SagaSpec | None] = {}
    live: list[LeaderSaga] = []
    untouched: set[str] = set()
    for n, kv in enumerate(snap.records, 1):
        if n % YIELD_EVERY == 0:
            await asyncio.sleep(0)  # ok: a yield, so the loop runs keepalives and other shards
        try:
            sid = keys.saga_id(kv.key, "saga")
        except DecodeError as exc:
            term.poison("saga", kv, str(exc))
            continue
        try:
            rec = SagaRecord.from_json(kv.value)
        except NewerRecordError as exc:
            # a newer whizorch's record: not ours to drive or to overwrite (its tasks too)
            term.poison("saga", kv, f"{exc}; left untouched")
            untouched.add(sid)
            continue
        except DecodeError as exc:
            term.poison("saga", kv, str(exc))
            await term.replace_undecodable(sid, kv, str(exc))
            continue
        pin = (rec.saga, rec.version)
        if pin not in specs:
            try:
                specs[pin] = await env.definitions.get(*pin)
            except DecodeError as exc:  # a published definition that does not parse
                log.error("saga %s: its definition %s %s cannot be read: %s", rec.id, *pin, exc)
                specs[pin] = None
        entry = LeaderSaga(rec, kv.mod_revision, specs[pin], live=not rec.is_final)
        if rec.is_final:  # final, but still indexed (an older leader's write): drop it from the index
            entry.live = True
        for index, task in active_tasks(keys, rec).items():
            if tasks.pop(task.key, None) is not None:  # the rest: put again by the next commit
                entry.tasks[index] = task
                term.writes.track(task)
        term.keep(entry)
        live.append(entry)
    results = await read_results(env.client, keys, {e.record.id: e.record.regions for e in live}, rev)
    cancels = {keys.saga_id(k, "cancel") for k in snap.cancels if _parses(term, k)}
    now = time.time()

    async def resume(entry: LeaderSaga) -> None:
        rec = entry.record
        got = snap.inputs.get(keys.input(rec.id)) or []
        if got:
            with contextlib.suppress(DecodeError):
                entry.input = decode_json(got[0].value, what="saga input")
        found = [kv for r in rec.regions for kv in results.get(keys.results(r, rec.id), [])]
        for rkv in found:
            learn_output(keys, entry, rkv)
        try:
            if rec.is_final:
                await term.place(entry)  # takes it out of the index
                return
            if entry.definition is None:
                await term.fail(entry, unknown_definition(rec.saga, rec.version))
                return
            await _resume(term, entry, found, rec.id in cancels, now)
        except PERMANENT as exc:
            # what retrying cannot fix (a write over etcd's limit) fails this saga, as
            # its driver would, not the takeover (every next leader would stop on it)
            log.error("saga %s: cannot resume: %s; failing the saga", rec.id, exc)
            term.spawn(rec.id, Fail(f"could not resume: {exc}"))

    # concurrently (their writes share the term's batches), a bounded number at once; a
    # transient error fails the takeover (and the group: no resume left over)
    for i in range(0, len(live), 512):
        async with asyncio.TaskGroup() as group:
            for e in live[i : i + 512]:
                group.create_task(resume(e))
    for kv in snap.submits:
        try:
            sid = keys.saga_id(kv.key, "submit")
        except DecodeError as exc:
            term.poison("submit", kv, str(exc))
            continue
        if sid in cancels:
            term.early_cancel(sid)
        term.spawn(sid, submit=kv)
    # tasks no active run owns (a final saga's, a superseded run's, a saga gone):
    # withdrawn, so no worker runs them; each only as the snapshot saw it
    orphans = [kv for key, kv in tasks.items() if keys.task_key(key)[2] not in untouched]
    if orphans:
        await _withdraw(term, orphans)
    return rev


def _parses(term: ShardLeader, key: bytes) -> bool:
    try:
        term.env.keys.saga_id(key, "cancel")
    except DecodeError:
        return False
    return True


async def _withdraw(term: ShardLeader, orphans: list[KeyValue]) -> None:
    try:
        await asyncio.gather(*(
            term.writes.batcher.txn([Compare.mod_revision(kv.key, "==", kv.mod_revision)], [Op.delete(kv.key)])
            for kv in orphans
        ))  # fmt: skip
    except BatchRefused as exc:
        raise LeadershipLost("the leader fence refused a write") from exc


async def _resume(term: ShardLeader, entry: LeaderSaga, results: list[KeyValue], cancelled: bool, now: float) -> None:
    """Feed what happened while nobody led; re-arm timers; put lost tasks again."""
    env = term.env
    for rkv in sorted(results, key=lambda kv: kv.mod_revision):
        try:
            ev = result_event(env.keys, rkv)
        except DecodeError as exc:
            term.poison("run", rkv, str(exc))
            continue
        await term.result_arrived(entry, ResultArrived(ev, rkv))
    # each apply replaced entry.record: look at the record as it is now
    if cancelled and not entry.record.cancel_requested:
        await term.apply(entry, m.Cancel())
    rec = entry.record
    for index, st in enumerate(rec.steps):
        if st.waiting_region:
            # a wait for a region (or a worker), in whatever state it began: its timer
            # died with the last leader, so arm it again
            waiting = m.RUN if st.state in ("pending", "dispatched") else m.COMPENSATE
            at = (st.dispatched_at or now) + m.wait_limit_s(st, env.settings)
            term.arm(at, rec.id, m.Timer(index, waiting, st.run if waiting == m.RUN else st.comp_run, "no_region"))
            continue
        kind = m.RUN if st.state == "dispatched" else m.COMPENSATE if st.state == "compensating" else None
        if kind is None:
            continue
        run = st.run if kind == m.RUN else st.comp_run
        if st.retry_at is not None:
            term.arm(st.retry_at, rec.id, m.Timer(index, kind, run, "retry"))
            continue
        step = entry.definition.steps[index] if entry.definition else None
        timeout = (step.timeout_s if kind == m.RUN else step.compensation_timeout_s) if step else None
        if timeout is not None:
            at = (st.dispatched_at or now) + timeout + env.settings.dispatch_grace_s
            term.arm(at, rec.id, m.Timer(index, kind, run, "deadline"))
    # a step in a region that died while nobody led, or waiting for a region that the
    # view may already have: RegionsChanged is sent only when the healthy set changes,
    # so without this the saga would wait for a change that never comes
    if any(
        s.waiting_region or (s.state in ("dispatched", "compensating") and s.region and not env.router.healthy(s.region))
        for s in rec.steps
    ):
        await term.apply(entry, m.RegionsChanged(frozenset(env.router.regions)))
    if set(active_tasks(env.keys, entry.record)) - set(entry.tasks) or term.unplaced(entry):
        # an active run's task is gone (its worker died while nobody led): put it on a
        # live worker of its region, same attempt (a new run by its fence token: no
        # retry is spent on a leader change); the deadline above still guards it
        await term.place(entry)
