"""The per-saga driver of one shard's term: mailboxes, and each event as one transition.

Each saga's events are applied in order by one driver task per saga (its mailbox):
etcd trouble is retried in place, so a later event never overtakes an earlier one; an
error retrying cannot fix (a write over etcd's request limit) fails that saga with the
reason. A transition is the pure machine's (``_machine.py``) on a copy of the cached
record, committed as one fenced write (``_writes.py``); the cache changes only once etcd
has it. Input that does not parse is quarantined, never fatal; only a bug ends the
term (and with it the orchestrator).

:class:`Driver` is the part of a :class:`~whizorch.saga.leader.ShardLeader` that
drives sagas; the term adds its lifecycle and its intake of watch events.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

from whizorch.coord import Fence
from whizorch.errors import DecodeError, WhizorchError
from whizorch.etcd import Compare, KeyValue, Op, RangeResult
from whizorch.saga import _machine as m
from whizorch.saga._events import RegionPreferenceUnmet, SagaAdopted, SagaFinished, StepFailedOver
from whizorch.saga._middleware import SagaEvent, run_guarded
from whizorch.saga._model import FAILED, SagaRecord, SubmissionPayload
from whizorch.saga._supervise import PERMANENT, Backoff, is_transient
from whizorch.saga._view import Timers
from whizorch.saga.leader._cache import (
    EVENT_NAMES,
    NO_INPUT,
    Conflict,
    Fail,
    Item,
    LeaderSaga,
    LeadershipLost,
    ResultArrived,
    TaskGone,
    active_tasks,
    describe,
    failed_record,
)
from whizorch.saga.leader._env import LeaderEnv
from whizorch.saga.leader._events import learn_output, result_event, unknown_definition
from whizorch.saga.leader._writes import LeaderWrites, is_active

__all__ = ["Driver"]

log = logging.getLogger("whizorch.saga.orchestrator")

Event = m.Event | Fail | TaskGone | ResultArrived | None


class Driver:
    """Drives the sagas of one shard for one term (built fresh per term)."""

    def __init__(self, env: LeaderEnv, shard: int, fence: Fence) -> None:
        self.env = env
        self.shard = shard
        self.fence = fence
        self.term = fence.token
        self.sagas: dict[str, LeaderSaga] = {}
        """The sagas in flight (and those being adopted once written)."""
        self.early_cancels: dict[str, None] = {}
        """Cancels seen before their saga's submission: applied at its adoption (bounded)."""
        self.timers = Timers()
        self.mailboxes: dict[str, collections.deque[Item]] = {}
        self.drivers: dict[str, asyncio.Task[None]] = {}
        self.lost = asyncio.Event()
        """Set when the fence refused a write or the leadership otherwise ended."""
        self.fatal: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Holds the bug that ends the term (and the orchestrator)."""
        self.writes = LeaderWrites(env.client, env.keys, fence, env.workers, shard)
        """Every write of this term: fenced, batched, placed on workers (``_writes.py``)."""

    # -- hooks the term provides ---------------------------------------------------------

    def is_leading(self) -> bool:
        """Still the shard's leader by its election and session (checked before writes)."""
        raise NotImplementedError  # pragma: no cover

    def poison(self, kind: str, kv: KeyValue, reason: str) -> None:
        """Quarantine input that does not parse (see ``_quarantine.py``) and skip it."""
        raise NotImplementedError  # pragma: no cover

    # -- events -------------------------------------------------------------------------

    def event(
        self, saga_id: str, saga: str, txid: int, event: str, detail: Any, before: SagaRecord | None, trace: dict[str, str]
    ) -> SagaEvent:
        return SagaEvent(
            saga_id=saga_id, saga=saga, transaction_id=txid, event=event, detail=detail, before=before,
            node=self.env.node_id, term=self.term, trace=trace, shard=self.shard,
        )

    def spawn(self, saga_id: str, event: Event = None, *, submit: KeyValue | None = None) -> None:
        """Queue an event for a saga; its driver applies the saga's events one at a time,
        in order (an adoption is queued with ``submit``)."""
        box = self.mailboxes.get(saga_id)
        if box is None:
            box = self.mailboxes[saga_id] = collections.deque()
        box.append((event, submit))
        if saga_id not in self.drivers:
            task = asyncio.get_running_loop().create_task(self._drive(saga_id, box), name=f"whizorch-saga-{saga_id}")
            self.drivers[saga_id] = task

    def known(self, sid: str) -> bool:
        """A saga this term drives, or is adopting (an event queued behind the adoption
        is applied once the record exists)."""
        return sid in self.sagas or sid in self.mailboxes

    def early_cancel(self, sid: str) -> None:
        self.early_cancels[sid] = None
        while len(self.early_cancels) > 4096:
            del self.early_cancels[next(iter(self.early_cancels))]

    def arm(self, at: float, saga_id: str, timer: m.Timer) -> None:
        self.timers.arm(at, saga_id, timer)

    async def _drive(self, saga_id: str, box: collections.deque[Item]) -> None:
        """Apply a saga's queued events in order. etcd trouble retries the same event
        (never reordered, never dropped); an error retrying cannot fix fails the saga;
        a bug ends the orchestrator."""
        backoff = Backoff(first_s=0.05, max_s=2.0)
        try:
            while box:
                event, submit = box[0]
                try:
                    await self._handle(saga_id, event, submit)
                except asyncio.CancelledError:
                    raise
                except LeadershipLost:
                    self.lost.set()
                    return
                except Exception as exc:
                    if is_transient(exc):
                        log.warning("saga %s: could not apply %r yet: %s; retrying", saga_id, event or "adoption", exc)
                        await asyncio.sleep(backoff.next_s())  # ok: backoff before applying the same event again
                        continue
                    if isinstance(exc, PERMANENT) and not isinstance(event, Fail):
                        # retrying cannot fix it (a write over etcd's limit, a value that is
                        # not JSON): the saga stops here, failed, with the reason
                        log.error("saga %s: cannot apply %r: %s; failing the saga", saga_id, event or "adoption", exc)
                        box[0] = (Fail(f"could not apply {describe(event)}: {exc}"), submit)
                        continue
                    log.exception("saga %s: bug while applying %r", saga_id, event)
                    if not self.fatal.done():
                        self.fatal.set_exception(exc)
                    return
                box.popleft()
                backoff.reset()
        finally:
            if self.drivers.get(saga_id) is asyncio.current_task():
                del self.drivers[saga_id]
                if not box and self.mailboxes.get(saga_id) is box:
                    del self.mailboxes[saga_id]

    async def _handle(self, saga_id: str, event: Event, submit: KeyValue | None) -> None:
        entry = self.sagas.get(saga_id)
        if isinstance(event, ResultArrived):
            if entry is not None:
                await self.result_arrived(entry, event)
            return
        if isinstance(event, TaskGone):
            if entry is not None:
                await self._task_gone(entry, event)
            return
        if isinstance(event, Fail):
            if entry is None:
                rec = failed_record(saga_id, "?", submit.create_revision if submit else 0, event.reason, time.time())
                await self._create_failed(LeaderSaga(rec, 0, None), submit)
            else:
                await self.fail(entry, event.reason)
            return
        if submit is not None:
            if entry is None:
                await self._adopt(saga_id, submit)
            return
        if entry is not None and event is not None:
            await self.apply(entry, event)

    # -- results and lost workers --------------------------------------------------------

    async def result_arrived(self, entry: LeaderSaga, arrived: ResultArrived) -> None:
        """Apply a result, in the saga's order: by now the write that sent its run out
        is in the cache, so a result from a region the step was never sent to (which
        only that region's workers can write, under etcd roles) is quarantined."""
        ev, rec = arrived.result, entry.record
        if 0 <= ev.step < len(rec.steps) and ev.region not in rec.steps[ev.step].regions and not rec.is_final:
            self.poison("run", arrived.kv, f"a result from region {ev.region!r}, where step {ev.step} was never sent")
            return
        learn_output(self.env.keys, entry, arrived.kv)
        await self.apply(entry, ev)

    async def _task_gone(self, entry: LeaderSaga, gone: TaskGone) -> None:
        """The worker holding a run's task is gone (or none took it): unless the run
        recorded its result first, the machine hears of a lost worker (ClaimLost)."""
        rec = entry.record
        if rec.is_final or not 0 <= gone.step < len(rec.steps):
            return
        st = rec.steps[gone.step]
        current = st.run if gone.kind == m.RUN else st.comp_run
        active = "dispatched" if gone.kind == m.RUN else "compensating"
        if st.state != active or current != gone.attempt or not is_active(st) or (st.worker or "") != gone.lease:
            return  # that run is over, or was placed again since
        assert st.region is not None
        # the run may have recorded its result just before its lease ended: the result
        # watch may deliver it after the registration's deletion, so look
        got = await self.env.client.get(self.env.keys.result(st.region, rec.id, gone.step, gone.kind, gone.attempt))
        if got.kvs:
            await self.result_arrived(entry, ResultArrived(result_event(self.env.keys, got.kvs[0]), got.kvs[0]))
            return
        task = entry.tasks.pop(gone.step, None)
        if task is not None:
            self.writes.untrack(task)
        if gone.drained:
            # a worker that drained left a run it never started (it was given it as it
            # left): put it on another worker, same attempt (a new run by its token)
            await self.place(entry)
            return
        await self.apply(entry, m.ClaimLost(gone.step, gone.kind, gone.attempt))

    # -- adoption ------------------------------------------------------------------------

    async def _adopt(self, saga_id: str, kv: KeyValue) -> None:
        env = self.env
        try:
            sub = SubmissionPayload.from_json(kv.value)
            name, value, trace, version = sub.saga, sub.input, sub.trace, sub.version
        except DecodeError as exc:
            self.poison("submit", kv, str(exc))
            rec = failed_record(saga_id, "?", kv.create_revision, f"undecodable submission: {exc}", time.time())
            rec.history.append({"event": "raw_submission", "raw": kv.value.decode(errors="replace")[:4000]})
            await self._create_failed(LeaderSaga(rec, 0, None, NO_INPUT), kv)
            return
        try:
            definition = await (env.definitions.get(name, version) if version else env.definitions.current(name))
        except DecodeError as exc:  # a published definition that does not parse
            definition, unknown = None, f"the definition of saga {name!r} cannot be read: {exc}"
        else:
            unknown = unknown_definition(name, version or "")
        if definition is None:
            self.poison("submit", kv, unknown)
            rec = failed_record(saga_id, str(name), kv.create_revision, unknown, time.time())
            rec.trace = trace
            await self._create_failed(LeaderSaga(rec, 0, None, value), kv)
            return
        ctx = self.event(saga_id, definition.name, kv.create_revision, "adopt", None, None, trace)
        created: list[LeaderSaga] = []

        async def final() -> SagaRecord:
            rec, tr = m.adopt(
                definition, saga_id=saga_id, txid=kv.create_revision, now=time.time(), route=env.router,
                settings=env.settings, trace=ctx.trace, term=self.term,
            )
            entry = LeaderSaga(rec, 0, definition, value)
            if await self._create(entry, tr, kv):
                created.append(entry)
            return entry.record

        await run_guarded(env.middleware, ctx, final)
        if not created:
            return  # the record existed already (a submission seen twice): nothing adopted
        entry = created[0]
        env.emit(SagaAdopted(saga_id=saga_id, saga=name))
        if saga_id in self.early_cancels:
            del self.early_cancels[saga_id]
            self.spawn(saga_id, m.Cancel())  # asked before the leader saw the submission
        if entry.record.steps and entry.record.steps[0].waiting_region and env.router.regions:
            # the region view may have changed while this adoption was in flight (the
            # region watch can lag the submit watch), and RegionsChanged reaches only
            # sagas already cached: look once more
            self.spawn(saga_id, m.RegionsChanged(frozenset(env.router.regions)))

    async def _create_failed(self, entry: LeaderSaga, submit: KeyValue | None) -> None:
        """Write a record that is failed from the start (undecodable or unknown type)."""
        rec = entry.record
        ctx = self.event(rec.id, rec.saga, rec.txid, "fail", None, None, dict(rec.trace))

        async def final() -> SagaRecord:
            await self._create(entry, m.Transition(changed=True), submit)
            return entry.record

        await run_guarded(self.env.middleware, ctx, final)

    async def _create(self, entry: LeaderSaga, tr: m.Transition, submit: KeyValue | None) -> bool:
        """Write a new record (create-if-absent, fenced; the submission becomes the
        saga's input and its index entry) and cache it. A record that exists already
        (the submission was seen twice) leaves the cache as it was: False."""
        sid = entry.record.id
        async with entry.lock:
            try:
                await self.commit(entry, entry.record, tr, submit=submit)
            except Conflict:
                # the txn's outcome is unknown, or the record exists: etcd decides
                key = self.env.keys.saga(sid)
                got = await self.env.client.get(key)
                if not got.kvs:
                    raise WhizorchError("the new saga record was not written", saga_id=sid) from None
                if submit is None or got.kvs[0].create_revision < submit.mod_revision or not self._ours(entry, got.kvs[0]):
                    await self._drop_submission(submit)
                    return False
                entry.live = not entry.record.is_final
                await self.reload(entry)
        self.keep(entry)
        return True

    def _ours(self, entry: LeaderSaga, kv: KeyValue) -> bool:
        """The record found after an unknown outcome is the one this adoption wrote."""
        try:
            rec = SagaRecord.from_json(kv.value)
        except DecodeError:
            return False
        return rec.txid == entry.record.txid and rec.leader_term == self.term

    async def _drop_submission(self, submit: KeyValue | None) -> None:
        """A submission for a saga that has a record already: removed (fenced)."""
        if submit is None:
            return
        await self.env.client.txn(
            [self.fence.compare(), Compare.mod_revision(submit.key, "==", submit.mod_revision)], [Op.delete(submit.key)],
            idempotent=True,
        )

    def keep(self, entry: LeaderSaga) -> None:
        """Cache a saga while it is in flight; a final one leaves the cache."""
        if entry.record.is_final:
            self.sagas.pop(entry.record.id, None)
        else:
            self.sagas[entry.record.id] = entry

    # -- transitions ---------------------------------------------------------------------

    async def apply(self, entry: LeaderSaga, event: m.Event) -> None:
        async with entry.lock:
            if not self.env.middleware:
                await self._apply_locked(entry, event)
                return
            if entry.definition is None or entry.record.is_final:
                return
            before = entry.record
            ctx = self.event(
                before.id, before.saga, before.txid, EVENT_NAMES.get(type(event), type(event).__name__), event, before,
                dict(before.trace),
            )

            async def final() -> SagaRecord | None:
                await self._apply_locked(entry, event)
                return entry.record if entry.record is not before else None

            await run_guarded(self.env.middleware, ctx, final)

    async def _apply_locked(self, entry: LeaderSaga, event: m.Event) -> None:
        """Apply one event (caller holds entry.lock); retries on a stale cache."""
        env = self.env
        for _ in range(3):
            if entry.definition is None or entry.record.is_final:
                return
            # the machine works on a copy: the cache changes only once etcd has it
            rec = entry.record.clone()
            tr = m.apply(rec, entry.definition, event, now=time.time(), route=env.router, settings=env.settings)
            if not tr.changed and not tr.dispatch and not tr.delete_tasks:
                for at, timer in tr.timers:
                    self.arm(at, rec.id, timer)
                return
            try:
                await self.commit(entry, rec, tr)
                return
            except Conflict:
                await self.reload(entry)
        raise WhizorchError("saga record keeps changing under the leader", saga_id=entry.record.id)

    async def reload(self, entry: LeaderSaga) -> None:
        """Our cache is stale (or a write's outcome unknown): read the record again, and
        which of its tasks exist, at one revision.

        A write whose answer was lost may have committed: the record then names the
        workers it chose, and the cache must know their tasks, or the next write would
        neither delete them (two live runs of a step) nor leave them be (the run put
        again elsewhere). A task that is gone with its run's result there was deleted by
        that result (its event follows): it counts as known, not as lost.
        """
        keys, client = self.env.keys, self.env.client
        key = keys.saga(entry.record.id)
        for _ in range(5):
            cur = await client.get(key)
            if cur.kvs:
                entry.record = SagaRecord.from_json(cur.kvs[0].value)
                entry.mod_revision = cur.kvs[0].mod_revision
            else:
                entry.mod_revision = 0
            wanted = active_tasks(keys, entry.record) if entry.mod_revision else {}
            old = list(entry.tasks.values())
            reads = [Op.get(t.key, keys_only=True) for t in (*wanted.values(), *old)]
            reads += [Op.get(keys.result(t.region, entry.record.id, i, t.kind, t.attempt), keys_only=True) for i, t in wanted.items()]
            if not reads:
                return
            res = await client.txn([Compare.mod_revision(key, "==", entry.mod_revision)], reads)
            if not res.succeeded:
                continue  # the record moved between the two reads
            found = [isinstance(got, RangeResult) and bool(got.kvs) for got in res.responses]
            n = len(wanted)
            exists = {t.key for t, there in zip((*wanted.values(), *old), found, strict=False) if there}
            recorded = dict(zip(wanted, found[n + len(old) :], strict=True))
            tasks = {i: t for i, t in entry.tasks.items() if t.key in exists}
            tasks.update({i: t for i, t in wanted.items() if t.key in exists or recorded[i]})
            for t in entry.tasks.values():
                self.writes.untrack(t)
            for t in tasks.values():
                self.writes.track(t)
            entry.tasks = tasks
            return
        raise WhizorchError("saga record keeps changing under the leader", saga_id=entry.record.id)  # retried

    async def commit(self, entry: LeaderSaga, rec: SagaRecord, tr: m.Transition, *, submit: KeyValue | None = None) -> None:
        """Write a transition (``_writes.py``: fenced, batched, its runs placed on
        workers) and apply its effects here: cache, timers, events, lost runs.

        On success the cache takes ``rec``; on failure it is left as it was.
        """
        env = self.env
        if not await env.contact.wait(self.lost):
            raise LeadershipLost("leadership ended in safe mode")
        if not self.is_leading():
            raise LeadershipLost("not leading")
        try:
            revision, unplaced = await self.writes.commit(entry, rec, tr, self.term, submit=submit)
        except LeadershipLost:
            self.lost.set()
            raise
        entry.mod_revision = revision
        for at, timer in tr.timers:
            self.arm(at, rec.id, timer)
        for fo in tr.failovers:
            env.emit(StepFailedOver(
                saga_id=rec.id, step=fo["step"], from_region=fo["from"], to_region=fo["to"], reason=fo["reason"], at=fo["at"]
            ))  # fmt: skip
        for unmet in tr.unmet:
            env.emit(RegionPreferenceUnmet(
                saga_id=rec.id, saga=rec.saga, step=unmet["step"], wanted=unmet["wanted"], to_region=unmet["to"],
                reason=unmet["reason"],
            ))  # fmt: skip
        for gone in unplaced:
            # no live worker took the run (none left in its region, or it died as we
            # wrote): the machine decides, as for any lost worker
            self.spawn(rec.id, gone)
        if rec.is_final:
            self.keep(entry)
            env.emit(SagaFinished(saga_id=rec.id, saga=rec.saga, status=rec.status))

    async def fail(self, entry: LeaderSaga, reason: str) -> None:
        """End a saga as failed (the dead-letter state) with ``reason``: its queued tasks
        are withdrawn. For what no retry can fix; an operator decides what next."""
        before = entry.record
        if before.is_final:
            return
        rec = before.clone()
        rec.status = FAILED
        rec.error = reason[:4000]
        rec.finished = time.time()
        rec.note(rec.finished, "failed", error=rec.error)
        withdraw = [
            (st.region, index)
            for index, st in enumerate(rec.steps)
            if st.region is not None and st.state in ("dispatched", "compensating")
        ]
        ctx = self.event(rec.id, rec.saga, rec.txid, "fail", None, before, dict(rec.trace))

        async def final() -> SagaRecord:
            async with entry.lock:
                await self.commit(entry, rec, m.Transition(changed=True, delete_tasks=withdraw))
            return entry.record

        try:
            await run_guarded(self.env.middleware, ctx, final)
        except Conflict:
            await self.reload(entry)
            raise WhizorchError("the saga record changed while failing it; trying again", saga_id=rec.id) from None

    async def replace_undecodable(self, saga_id: str, kv: KeyValue, reason: str) -> None:
        """An undecodable record: replace it with a failed one that keeps the raw bytes."""
        rec = failed_record(saga_id, "?", 0, f"undecodable saga record: {reason}", time.time())
        rec.history.append({"event": "raw_record", "raw": kv.value.decode(errors="replace")[:4000]})
        entry = LeaderSaga(rec, kv.mod_revision, None, live=True)  # found through the in-flight index
        await self.commit(entry, rec, m.Transition(changed=True))

    def unplaced(self, entry: LeaderSaga) -> bool:
        """An active run the record puts on no worker (a v1 record, or none was free)."""
        return any(
            st.worker is None and st.region is not None and st.retry_at is None and not st.waiting_region
            and st.state in ("dispatched", "compensating")
            for st in entry.record.steps
        ) and not entry.record.is_final

    async def place(self, entry: LeaderSaga) -> None:
        """Commit the record unchanged but for the workers of runs whose task is gone."""
        async with entry.lock:
            rec = entry.record.clone()
            await self.commit(entry, rec, m.Transition(changed=True))
