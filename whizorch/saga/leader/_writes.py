"""A shard leader's write path: one transition of one saga as one fenced write, placed
on workers, shared with other sagas' writes in one etcd txn.

A write compares the record's mod_revision, puts the record, puts each active run's
task on the lease of the worker chosen for it (with a compare that the worker's
registration, on that same lease, still exists: a put on an ended lease would make
etcd refuse the whole batch) and deletes the tasks of runs that ended or moved. The
write that creates a record consumes its submission (deleted, its input kept under
``input/``) and adds the saga to the shard's in-flight index; the write that makes a
saga final takes it out of that index, drops its cancel request and, unless it failed
(kept for an operator), files it under ``done/`` for retention.
The :class:`~whizorch.etcd.TxnBatcher` nests it with the writes of other
sagas under one compare of the leader's fence.

Choosing a worker: the least loaded of the run's region by the tasks this leader has
on each (per unit of its concurrency); never one whose lease is known to have ended;
a draining worker only if no other is left.
"""

from __future__ import annotations

from collections.abc import Mapping

from whizorch.coord import Fence
from whizorch.errors import OutcomeUnknownError
from whizorch.etcd import BatchRefused, Compare, EtcdClient, KeyValue, Op, RangeResult, TxnBatcher
from whizorch.saga import _machine as m
from whizorch.saga._keys import Keys
from whizorch.saga._model import FAILED, SagaRecord, StepState, encode_json
from whizorch.saga._view import Workers
from whizorch.saga.leader._cache import (
    NO_INPUT,
    Conflict,
    LeaderSaga,
    LeadershipLost,
    Task,
    TaskGone,
    active_tasks,
    task_payload,
)

__all__ = ["LeaderWrites", "is_active"]


def is_active(st: StepState) -> bool:
    """A run is out (dispatched or compensating), not waiting out a delay or a region."""
    return st.state in ("dispatched", "compensating") and st.retry_at is None and not st.waiting_region and st.region is not None


class LeaderWrites:
    """The write path of one leadership (made anew for each: nothing carries over)."""

    def __init__(self, client: EtcdClient, keys: Keys, fence: Fence, workers: Workers, shard: int = 0) -> None:
        self.keys = keys
        self.workers = workers
        self.shard = shard
        self.batcher = TxnBatcher(
            client, outer_compare=lambda: [fence.compare()], outer_failure=lambda: [Op.get(fence.key)], max_in_flight=4
        )
        """Every saga's write of this leadership goes through it (see ``etcd/_batch.py``)."""
        self.outstanding: dict[str, int] = {}
        """Tasks this leader has on each worker (lease hex): how it spreads the load."""
        self.dead_leases: dict[str, None] = {}
        """Workers whose registration (so lease) ended while this node leads (the newest
        few thousand: a lease id is never reused, and an old one has no task left)."""

    def track(self, task: Task) -> None:
        """A task found in etcd (rebuild, reload) counts on its worker."""
        if task.lease not in self.dead_leases:
            self.outstanding[task.lease] = self.outstanding.get(task.lease, 0) + 1

    def untrack(self, task: Task) -> None:
        if task.lease in self.outstanding:
            self.outstanding[task.lease] = max(0, self.outstanding[task.lease] - 1)

    def worker_gone(self, lease: str) -> None:
        """A worker's registration was deleted: its lease, and every task on it, ended."""
        self.dead_leases[lease] = None
        while len(self.dead_leases) > 4096:
            del self.dead_leases[next(iter(self.dead_leases))]
        self.outstanding.pop(lease, None)

    def _lifecycle(self, entry: LeaderSaga, rec: SagaRecord, submit: KeyValue | None) -> tuple[list[Compare], list[Op]]:
        """The compares and ops of a record's creation (the submission consumed, the
        in-flight index entry) and of its end (index entry out, cancel request dropped,
        filed for retention)."""
        compares: list[Compare] = []
        ops: list[Op] = []
        keys, sid = self.keys, rec.id
        if entry.mod_revision == 0 and submit is not None:
            compares.append(Compare.mod_revision(submit.key, "==", submit.mod_revision))
            ops.append(Op.delete(submit.key))
            if entry.input is not NO_INPUT:
                ops.append(Op.put(keys.input(sid), encode_json(entry.input, what="saga input")))
        if not rec.is_final:
            if not entry.live:
                ops.append(Op.put(keys.live(self.shard, sid), encode_json({"saga": rec.saga, "version": rec.version}, what="index")))
        elif entry.live or entry.mod_revision == 0:
            if entry.live:
                ops.append(Op.delete(keys.live(self.shard, sid)))
            ops.append(Op.delete(keys.cancel(sid)))
            if rec.status != FAILED and rec.finished is not None:
                doc = encode_json({"regions": rec.regions}, what="index")
                ops.append(Op.put(keys.done(self.shard, int(rec.finished * 1000), sid), doc))
        return compares, ops

    async def commit(
        self, entry: LeaderSaga, rec: SagaRecord, tr: m.Transition, term: int, *, submit: KeyValue | None = None
    ) -> tuple[int, list[TaskGone]]:
        """Write ``rec`` (the machine's new record for ``entry``) with its tasks (and,
        creating it, consume ``submit``).

        Returns the revision it was written at and the runs no live worker holds (to
        report to the machine as lost); ``entry.record``/``entry.tasks`` take the new
        state. Raises Conflict (the record moved, or the outcome is unknown: re-read),
        LeadershipLost (the fence refused), or etcd's error.
        """
        key = self.keys.saga(rec.id)
        # every write carries the writer's term (not only the adopting leader's): etcd's
        # history of a record then shows which leadership made each write
        rec.leader_term = term
        dispatched = {d.step: d for d in tr.dispatch}
        for _ in range(4):
            picked = self._place_runs(entry, rec, dispatched)
            after = active_tasks(self.keys, rec)
            compares = [Compare.mod_revision(key, "==", entry.mod_revision)]
            ops = [Op.put(key, rec.to_json())]
            more_compares, more_ops = self._lifecycle(entry, rec, submit)
            compares += more_compares
            ops += more_ops
            checks: list[tuple[int, Task]] = []
            for index, task in entry.tasks.items():
                if after.get(index) != task:
                    ops.append(Op.delete(task.key))
            for index, task in after.items():
                if entry.tasks.get(index) != task:
                    d = dispatched.get(index) or m.Dispatch(index, task.kind, task.attempt, task.region)
                    lease_id = int(task.lease, 16)
                    ops.append(Op.put(task.key, task_payload(entry, d).to_json(), lease=lease_id))
                    compares.append(Compare.create_revision(self.keys.region(task.region, lease_id), ">", 0))
                    checks.append((index, task))
            failure = [
                Op.get(key, keys_only=True),
                *(Op.get(self.keys.region(t.region, int(t.lease, 16)), keys_only=True) for _, t in checks),
            ]
            try:
                res = await self.batcher.txn(compares, ops, failure)
            except BatchRefused as exc:
                self._unpick(picked)
                raise LeadershipLost("the leader fence refused a write") from exc
            except OutcomeUnknownError as exc:
                self._unpick(picked)
                raise Conflict() from exc  # re-read decides
            except BaseException:
                self._unpick(picked)
                raise
            if res.succeeded:
                break
            self._unpick(picked)
            current = res.responses[0]
            now_rev = current.kvs[0].mod_revision if isinstance(current, RangeResult) and current.kvs else 0
            gone = [(i, t) for (i, t), got in zip(checks, res.responses[1:], strict=True) if isinstance(got, RangeResult) and not got.kvs]
            if now_rev != entry.mod_revision or not gone:
                raise Conflict()
            for index, t in gone:  # its lease ended before our write: place the run elsewhere
                self.worker_gone(t.lease)
                rec.steps[index].worker = None
        else:
            raise Conflict()
        for index, t in entry.tasks.items():
            if after.get(index) != t:
                self.untrack(t)
        entry.record = rec
        entry.tasks = after
        entry.live = not rec.is_final
        lost = [
            TaskGone(index, m.RUN if st.state == "dispatched" else m.COMPENSATE,
                     st.run if st.state == "dispatched" else st.comp_run, st.worker or "")
            for index, st in enumerate(rec.steps)
            if not rec.is_final and is_active(st) and (index not in after or after[index].lease in self.dead_leases)
        ]  # fmt: skip
        return res.header.revision, lost

    def _place_runs(self, entry: LeaderSaga, rec: SagaRecord, dispatched: Mapping[int, m.Dispatch]) -> list[str]:
        """Choose the worker of each run that needs one: dispatched now, or active with
        no live task (its worker died while nobody led, or as we wrote). The chosen are
        counted as busier at once, so one batch spreads over the region's workers."""
        picked: list[str] = []
        if rec.is_final:
            return picked
        known = {t.key for t in entry.tasks.values()}
        for index, st in enumerate(rec.steps):
            if not is_active(st):
                continue
            assert st.region is not None
            if index not in dispatched and st.worker is not None and st.worker not in self.dead_leases:
                kind, attempt = (m.RUN, st.run) if st.state == "dispatched" else (m.COMPENSATE, st.comp_run)
                if self.keys.task(st.region, st.worker, rec.id, index, kind, attempt) in known:
                    continue
            need = (entry.definition.name, entry.definition.version) if entry.definition is not None else None
            lease = self.workers.pick(st.region, self.outstanding, exclude=self.dead_leases.keys(), need=need)
            st.worker = lease
            if lease is not None:
                self.outstanding[lease] = self.outstanding.get(lease, 0) + 1
                picked.append(lease)
        return picked

    def _unpick(self, picked: list[str]) -> None:
        for lease in picked:
            self.outstanding[lease] = max(0, self.outstanding.get(lease, 0) - 1)
