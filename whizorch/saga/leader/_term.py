"""One term of one shard's leadership: built when the shard is won, dropped when lost.

A :class:`ShardLeader` owns everything one leadership of one shard needs (its cache
of sagas in flight, mailboxes, timers, batched writes under the shard's fence, its
retention sweep), so a new term never sees an old term's state. The orchestrator
process campaigns, hands it the shard's watch events (submissions, results and cancels
of its sagas; every worker registration change) and runs it until it loses the shard,
is handed another, or closes; a bug in it ends the orchestrator.

Events arriving while the term takes the shard over are held and applied after, those
its takeover read already saw skipped (by revision), so none is lost or seen twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from whizorch.coord import Election, Fence
from whizorch.errors import DecodeError, WhizorchError
from whizorch.etcd import Compare, EventType, KeyValue, Op, WatchEvent
from whizorch.saga import _machine as m
from whizorch.saga._events import SagaPurged
from whizorch.saga._supervise import is_transient
from whizorch.saga.leader._cache import LeadershipLost, ResultArrived, TaskGone
from whizorch.saga.leader._driver import Driver
from whizorch.saga.leader._env import LeaderEnv
from whizorch.saga.leader._events import result_event
from whizorch.saga.leader._resume import take_over

__all__ = ["RegionChange", "ShardLeader"]

log = logging.getLogger("whizorch.saga.orchestrator")

PURGE_PAGE = 500
"""Finished sagas one retention sweep reads (and purges) at a time."""


class RegionChange:
    """A worker registration changed (as the process's view saw it)."""

    __slots__ = ("drained", "lease", "rerouted", "revision")

    def __init__(self, revision: int, lease: str | None, drained: bool, rerouted: frozenset[str] | None) -> None:
        self.revision = revision
        self.lease = lease
        """The worker that left (its lease, hex), or None."""
        self.drained = drained
        """It left by draining (its unstarted runs are placed again, same attempt)."""
        self.rerouted = rerouted
        """The healthy regions, when what they can run changed (waiting steps may go)."""


class ShardLeader(Driver):
    """The leader of one shard for one term (see module docs)."""

    def __init__(
        self, env: LeaderEnv, shard: int, fence: Fence, election: Election,
        *, on_ready: Callable[[ShardLeader], None] | None = None,
    ) -> None:
        super().__init__(env, shard, fence)
        self.election = election
        self._on_ready = on_ready
        self.revision = 0
        """The revision the takeover read the shard at (0 until it has)."""
        self._held: list[tuple[str, WatchEvent | RegionChange]] | None = []

    # -- state ---------------------------------------------------------------------------

    def is_leading(self) -> bool:
        return self.election.is_leader and not self.lost.is_set()

    @property
    def ready(self) -> bool:
        """The takeover is done: the term drives its shard's sagas."""
        return self._held is None

    def in_flight(self) -> dict[str, int]:
        """Sagas in flight by status."""
        counts: dict[str, int] = {}
        for entry in list(self.sagas.values()):
            if not entry.record.is_final:
                counts[entry.record.status] = counts.get(entry.record.status, 0) + 1
        return counts

    def waiting(self) -> dict[str, int]:
        """Steps waiting for a region or for a worker with their definition, by cause."""
        counts: dict[str, int] = {}
        for entry in list(self.sagas.values()):
            for st in entry.record.steps:
                if st.waiting_region:
                    cause = st.waiting_for or "region"
                    counts[cause] = counts.get(cause, 0) + 1
        return counts

    # -- running -------------------------------------------------------------------------

    async def run(self) -> None:
        """Take the shard over and drive it until the term ends: raises LeadershipLost
        when it is lost, the bug when one ends it; cancelled when handed over."""
        env = self.env
        helpers: list[asyncio.Future[Any]] = []
        try:
            self.revision = await take_over(self)
            held, self._held = self._held or [], None
            for kind, ev in held:
                self._intake(kind, ev)
            log.info("orchestrator %s leads shard %d (term %d)", env.node_id, self.shard, self.term)
            if self._on_ready is not None:
                self._on_ready(self)
            helpers = [
                asyncio.ensure_future(self.timers.run(self.spawn)),
                asyncio.ensure_future(self._retention_loop()),
                asyncio.ensure_future(self.election.wait_lost()),
                asyncio.ensure_future(self.lost.wait()),
                self.fatal,
            ]
            done, _ = await asyncio.wait(helpers, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                if not fut.cancelled() and fut.exception() is not None:
                    raise fut.exception()  # type: ignore[misc]
            raise LeadershipLost(f"shard {self.shard}: leadership lost ({self.election.session.lost_reason or 'fence or key gone'})")
        finally:
            # stop every write of this term at once
            self.lost.set()
            pending = [*helpers, *self.drivers.values()]
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self.drivers.clear()
            self.mailboxes.clear()
            self.sagas.clear()

    # -- intake --------------------------------------------------------------------------

    def deliver(self, kind: str, ev: WatchEvent | RegionChange) -> None:
        """An event of this shard from the process's watches (``submit``, ``run``,
        ``cancel``), or a worker registration change (``region``)."""
        if self._held is not None:
            self._held.append((kind, ev))
            return
        self._intake(kind, ev)

    def _intake(self, kind: str, ev: WatchEvent | RegionChange) -> None:
        revision = ev.revision if isinstance(ev, RegionChange) else ev.kv.mod_revision
        if revision <= self.revision or self.lost.is_set():
            return  # the takeover read saw it
        try:
            if isinstance(ev, RegionChange):
                self._on_region(ev)
            elif kind == "submit":
                self._on_submit(ev)
            elif kind == "run":
                self._on_run(ev)
            elif kind == "cancel":
                self._on_cancel(ev)
        except DecodeError as exc:  # input that does not parse: quarantined, never fatal
            assert isinstance(ev, WatchEvent)
            self.poison(kind, ev.kv, str(exc))

    def _on_submit(self, ev: WatchEvent) -> None:
        if ev.type is EventType.PUT and ev.kv.version == 1:
            sid = self.env.keys.saga_id(ev.kv.key, "submit")
            if sid not in self.sagas:
                self.spawn(sid, submit=ev.kv)

    def _on_run(self, ev: WatchEvent) -> None:
        """A result (a worker's txn puts it and deletes the run's task)."""
        if ev.type is not EventType.PUT:
            return
        sid = self.env.keys.run_key(ev.kv.key)[1]
        if self.known(sid):
            self.spawn(sid, ResultArrived(result_event(self.env.keys, ev.kv), ev.kv))

    def _on_cancel(self, ev: WatchEvent) -> None:
        if ev.type is EventType.PUT:
            sid = self.env.keys.saga_id(ev.kv.key, "cancel")
            if self.known(sid):
                self.spawn(sid, m.Cancel())
            else:
                self.early_cancel(sid)

    def _on_region(self, change: RegionChange) -> None:
        if change.lease is not None:
            # its lease ended (or it was deleted): so did the tasks on that lease
            self.writes.worker_gone(change.lease)
            for sid, entry in self.sagas.items():
                for index, task in entry.tasks.items():
                    if task.lease == change.lease:
                        self.spawn(sid, TaskGone(index, task.kind, task.attempt, change.lease, change.drained))
        if change.rerouted is not None:
            for sid, entry in self.sagas.items():
                if not entry.record.is_final:
                    self.spawn(sid, m.RegionsChanged(change.rerouted))

    # -- quarantine ------------------------------------------------------------------------

    def poison(self, kind: str, kv: KeyValue, reason: str) -> None:
        note = self.env.quarantine.note(kind, kv, reason)
        if note is None:
            return
        qkey, value = note
        fence, client = self.fence, self.env.client

        async def write() -> None:
            await client.txn([fence.compare(), Compare.create_revision(qkey, "==", 0)], [Op.put(qkey, value)], idempotent=True)

        self.env.background.start(write, "quarantine-note")

    # -- retention -------------------------------------------------------------------------

    async def _retention_loop(self) -> None:
        """Purge this shard's finished sagas older than the retention (fenced), read
        from the ``done/`` index in end-time order: never the whole history."""
        period = min(60.0, max(0.2, self.env.retention_s / 4))
        while True:
            await asyncio.sleep(period)  # ok: periodic sweep
            try:
                await self.purge_expired(time.time())
            except LeadershipLost:
                raise
            except WhizorchError as exc:
                if not is_transient(exc):
                    raise
                log.warning("shard %d: retention sweep failed: %s (tried again next sweep)", self.shard, exc)

    async def purge_expired(self, now: float) -> int:
        """Purge what finished before ``now - retention``; return how many."""
        env, keys = self.env, self.env.keys
        prefix = keys.done_shard(self.shard)
        end = prefix + f"{int((now - env.retention_s) * 1000):015d}".encode()
        purged = 0
        while True:
            res = await env.client.get(prefix, range_end=end, limit=PURGE_PAGE)
            before = purged
            for kv in res.kvs:
                if not await env.contact.wait(self.lost):
                    raise LeadershipLost("leadership ended in safe mode")
                if await self._purge(kv):
                    purged += 1
            if not res.more or purged == before:
                return purged

    async def _purge(self, done: KeyValue) -> bool:
        env, keys = self.env, self.env.keys
        sid = done.key.rpartition(b"/")[2].decode(errors="replace")
        try:
            regions = [str(r) for r in json.loads(done.value).get("regions", [])]
        except (ValueError, AttributeError):
            regions = []
        res = await env.client.txn(
            [self.fence.compare(), Compare.mod_revision(done.key, "==", done.mod_revision)],
            [
                Op.delete(keys.saga(sid)),
                Op.delete(keys.input(sid)),
                Op.delete(keys.cancel(sid)),
                Op.delete(done.key),
                *(Op.delete(keys.results(region, sid), prefix=True) for region in regions),
            ],
            idempotent=True,
        )
        if res.succeeded:
            env.emit(SagaPurged(saga_id=sid))
        elif not self.is_leading():
            raise LeadershipLost("the fence refused a purge")
        return res.succeeded
