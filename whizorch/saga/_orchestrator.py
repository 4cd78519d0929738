"""The orchestrator: campaigns for leadership; the leader drives every saga.

While leading, it keeps an in-memory view rebuilt from etcd (records, inputs, outputs,
tasks, regions) and turns each event into one state-machine transition, committed
as one txn guarded by the leader's fence and the record's mod_revision. Losing the
lease, or a write refused by the fence, stops the driver at once (safe mode); the node
then campaigns again and, if it wins, rebuilds from etcd.

Each saga's events are applied in order by one driver task per saga (its mailbox):
etcd trouble is retried in place, so a later event never overtakes an earlier one; an
error retrying cannot fix (a write over etcd's request limit) fails that saga with the
reason. Input that does not parse (a key that is not UTF-8, a value that is not the
JSON expected, a record from a newer schema) is quarantined: logged once, counted,
noted under ``<ns>/quarantine/`` and skipped; the leader leads on. Only a bug ends
the orchestrator (``join()`` and ``async with`` raise it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from whizorch.coord import Election, Fence, LeaseTiming, Session
from whizorch.errors import (
    ClosedError,
    ConfigError,
    DecodeError,
    WhizorchError,
)
from whizorch.etcd import (
    BatchRefused,
    Compare,
    EtcdClient,
    EventType,
    KeyValue,
    Op,
    RangeResult,
    WatchEvent,
)
from whizorch.saga import _machine as m
from whizorch.saga._contact import ContactMonitor
from whizorch.saga._definition import App
from whizorch.saga._definitions import Definitions
from whizorch.saga._events import (
    ContactRestored,
    LeadershipChanged,
    OrchestratorEvent,
    RaftLeaderMoved,
    RegionPreferenceUnmet,
    RegionsHealthy,
    SafeModeEntered,
    SagaAdopted,
    SagaFinished,
    SagaPurged,
    StepFailedOver,
)
from whizorch.saga._latency import LatencyMonitor
from whizorch.saga._leader_cache import (
    EVENT_NAMES,
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
from whizorch.saga._leader_write import LeaderWrites, is_active
from whizorch.saga._locality import bring_raft_leader
from whizorch.saga._middleware import (
    Middleware,
    SagaEvent,
    attach_middleware,
    check_middleware,
    leadership_changed,
    run_guarded,
)
from whizorch.saga._model import (
    FAILED,
    Keys,
    NewerRecordError,
    ResultPayload,
    SagaRecord,
    SubmissionPayload,
    encode_json,
)
from whizorch.saga._quarantine import Quarantine
from whizorch.saga._rebuild import Finished, read_many, read_snapshot
from whizorch.saga._router import Router
from whizorch.saga._supervise import (
    PERMANENT,
    BackgroundTasks,
    Backoff,
    end_session,
    is_transient,
    role_lease,
    stop_role,
)
from whizorch.saga._view import Timers, Workers

__all__ = ["Orchestrator"]

log = logging.getLogger("whizorch.saga.orchestrator")


_DEFAULT_SETTINGS = m.Settings()


class Orchestrator:
    """One orchestrator node. ``async with Orchestrator(client, app):`` campaigns and,
    when elected, drives sagas until closed."""

    def __init__(
        self,
        client: EtcdClient,
        app: App,
        /,
        *,
        namespace: str = "whizorch",
        node_id: str | None = None,
        router: Router | None = None,
        lease: LeaseTiming | None = None,
        lease_ttl_s: int | None = None,
        keepalive_interval_s: float | None = None,
        step_down_margin_s: float | None = None,
        retention_s: float = 3600.0,
        settings: m.Settings = _DEFAULT_SETTINGS,
        on_event: Callable[[OrchestratorEvent], None] | None = None,
        middleware: Sequence[Middleware] = (),
        contact_deadline_s: float | None = 0.6,
        region_endpoints: Mapping[str, Sequence[str]] | None = None,
        raft_leader_locality: bool = True,
    ) -> None:
        if not isinstance(app, App):
            raise ConfigError("Orchestrator needs a whizorch App", field="app", value=type(app).__name__)
        if not isinstance(retention_s, (int, float)) or retention_s < 0:
            raise ConfigError("retention_s must be >= 0", field="retention_s", value=retention_s)
        if contact_deadline_s is not None and (
            isinstance(contact_deadline_s, bool) or not isinstance(contact_deadline_s, (int, float))
            or not 0.05 <= contact_deadline_s
        ):
            raise ConfigError(
                "contact_deadline_s must be a number of seconds >= 0.05, or None", field="contact_deadline_s",
                value=contact_deadline_s,
            )
        self.client = client
        self.app = app
        self.keys = Keys(namespace)
        self.node_id = node_id or f"{socket.gethostname()}-{os.getpid()}"
        self.router = router or Router()
        self.lease = role_lease(
            lease, ttl_s=lease_ttl_s, keepalive_interval_s=keepalive_interval_s, step_down_margin_s=step_down_margin_s
        )
        """How the lease behind this role's liveness is kept (see whizorch.coord.LeaseTiming)."""
        self.lease_ttl_s = self.lease.ttl_s
        self.retention_s = float(retention_s)
        self.settings = settings
        self.on_event = on_event
        self.middleware = check_middleware(middleware)
        """Around every event applied to a saga: ``async def mw(ctx: SagaEvent, call_next)``."""
        self.contact_deadline_s = contact_deadline_s
        """Split-brain detection: a leader with no quorum contact this long pauses its
        writes (safe mode) until contact returns (see ``_contact.py``); None: off."""
        self._contact: ContactMonitor | None = None
        self.region_endpoints = {str(r): tuple(eps) for r, eps in (region_endpoints or {}).items()}
        """Each region's own etcd members (``[regions.<name>] endpoints``): while leading,
        the round trip to each is measured for the router (see ``_latency.py``)."""
        self.raft_leader_locality = raft_leader_locality
        """On winning, move etcd's Raft leadership to a member of the router's home
        region when one is fit (``region_endpoints[home]``; see ``_locality.py``): every
        leader write then pays one quorum round from home, not a WAN hop first."""
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._election: Election | None = None
        self._fence: Fence | None = None
        self._sagas: dict[str, LeaderSaga] = {}
        """The sagas in flight (and those being adopted once written)."""
        self._finished: dict[str, Finished] = {}
        """Final sagas, until retention purges them."""
        self._early_cancels: dict[str, None] = {}
        """Cancels seen before their saga's submission (separate watches): applied at
        its adoption (bounded: the newest few thousand)."""
        self._workers = Workers()
        self._timers = Timers()
        self._mailboxes: dict[str, collections.deque[Item]] = {}
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._fatal: asyncio.Future[None] | None = None
        self._background = BackgroundTasks(f"whizorch-orchestrator-{self.node_id}")
        self._quarantine = Quarantine(self.keys, self.node_id, self._emit)
        self._definitions = Definitions(client, self.keys, app)
        """The definitions sagas are driven with: the App's, then those published in etcd."""
        self._published = False
        self._lost: asyncio.Event = asyncio.Event()
        self._writes: LeaderWrites | None = None
        """The write path of the current leadership (``_leader_write.py``)."""
        self.is_leader = False
        """True while this node leads and its driver runs."""
        self.term = 0
        """The term (fencing token) of the current leadership, 0 when not leading."""
        self.leader_changed = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Orchestrator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start campaigning in the background."""
        if self._task is not None or self._closed:
            raise ClosedError("an Orchestrator starts once")
        attach_middleware(self.middleware, self)
        self._task = asyncio.get_running_loop().create_task(self._main(), name=f"whizorch-orchestrator-{self.node_id}")

    async def aclose(self) -> None:
        """Stop driving, resign and close the session. Idempotent."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        await stop_role(task, self._background)

    async def join(self) -> None:
        """Wait until the orchestrator stops by itself, which only a fatal error does
        (a bug, bad configuration, refused credentials): it is raised here. Faults etcd
        or the network cause are waited out: the node campaigns again."""
        task = self._task
        if task is None:
            raise ClosedError("join() needs a started Orchestrator")
        await asyncio.shield(task)

    async def wait_leader(self, timeout_s: float | None = None) -> None:
        """Return once this node leads."""
        async with asyncio.timeout(timeout_s):
            while not self.is_leader:
                self.leader_changed.clear()
                await self.leader_changed.wait()

    def _emit(self, event: OrchestratorEvent) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # an observer's bug must not stop the driver
                log.exception("on_event callback failed")

    async def _main(self) -> None:
        backoff = Backoff()
        while not self._closed:
            session = Session(self.client, timing=self.lease)
            try:
                await session.open()
                if not self._published:
                    # once: a definition published under its version with other steps
                    # is a ConfigError, which ends the orchestrator with its message
                    await self._definitions.publish_app()
                    self._published = True
                election = Election(session, self.keys.leader)
                self._election = election
                try:
                    fence = await election.campaign(self.node_id)
                    backoff.reset()
                    await self._lead(session, election, fence)  # steps down on its way out
                finally:
                    with contextlib.suppress(WhizorchError):
                        await election.resign()  # skipped when the session is lost
            except asyncio.CancelledError:
                raise
            except LeadershipLost as exc:
                log.warning("orchestrator %s: %s; campaigning again", self.node_id, exc)
            except Exception as exc:
                if not is_transient(exc):
                    log.error("orchestrator %s: stopping on a fatal error: %r", self.node_id, exc)
                    raise
                log.warning("orchestrator %s: %s; campaigning again", self.node_id, exc)
            finally:
                await end_session(session, self._background)
            if not self._closed:
                await asyncio.sleep(backoff.next_s())  # ok: backoff before the next campaign

    def _set_leader(self, leading: bool, term: int) -> None:
        if leading == self.is_leader and term == self.term:
            return  # a rebuild that failed before leading has no step-down to report
        self.is_leader = leading
        self.term = term
        self.leader_changed.set()
        self._emit(LeadershipChanged(leading=leading, node=self.node_id, term=term))
        leadership_changed(self.middleware, leading, term, self.node_id)

    def in_flight(self) -> dict[str, int]:
        """Sagas this leader drives that are not final, by status (empty when not leading)."""
        counts: dict[str, int] = {}
        if self.is_leader:
            for entry in list(self._sagas.values()):
                if not entry.record.is_final:
                    counts[entry.record.status] = counts.get(entry.record.status, 0) + 1
        return counts

    def waiting(self) -> dict[str, int]:
        """Steps of the sagas this leader drives that wait for a region or for a worker
        with their definition, by cause (empty when not leading)."""
        counts: dict[str, int] = {}
        if self.is_leader:
            for entry in list(self._sagas.values()):
                for st in entry.record.steps:
                    if st.waiting_region:
                        cause = st.waiting_for or "region"
                        counts[cause] = counts.get(cause, 0) + 1
        return counts

    def _event(
        self, saga_id: str, saga: str, txid: int, event: str, detail: m.Event | None, before: SagaRecord | None,
        trace: dict[str, str],
    ) -> SagaEvent:
        return SagaEvent(
            saga_id=saga_id, saga=saga, transaction_id=txid, event=event, detail=detail, before=before,
            # while rebuilding, the fence is set before is_leader/term are published
            node=self.node_id, term=self._fence.token if self._fence is not None else self.term, trace=trace,
        )

    # -- leading ---------------------------------------------------------------------

    async def _lead(self, session: Session, election: Election, fence: Fence) -> None:
        self._fence = fence
        self._sagas.clear()
        self._finished.clear()
        self._early_cancels.clear()
        self._workers.clear()
        self._timers.clear()
        self._lost = asyncio.Event()
        self._fatal = asyncio.get_running_loop().create_future()
        self._quarantine.reset()
        # the transitions of many sagas share one txn: each saga's own compares in a
        # nested txn, the leader's fence once around them all
        self._writes = LeaderWrites(self.client, self.keys, fence, self._workers)
        log.info("orchestrator %s leads (term %d)", self.node_id, fence.token)
        everything: list[asyncio.Future[Any]] = []
        stop: list[asyncio.Future[Any]] = []
        try:
            # inside the try: a rebuild that fails leaves no fence and no spawned transition behind
            home = self.region_endpoints.get(self.router.home_region or "", ())
            if self.raft_leader_locality and home:
                # once per leadership, before any write of ours: a move stalls writes in
                # flight for as long as an etcd election would
                locality = await bring_raft_leader(self.client, home, timeout_s=5.0)
                self._emit(RaftLeaderMoved(
                    node=self.node_id, outcome=locality.outcome.value, before=locality.leader_before,
                    after=locality.leader_after, took_s=round(locality.took_s, 3),
                ))  # fmt: skip
            revision = await self._rebuild()
            self._set_leader(True, fence.token)
            watchers = [
                asyncio.ensure_future(self._watch(kind, revision, handler))
                for kind, handler in (
                    ("submit", self._on_submit_event),
                    ("run", self._on_run_event),
                    ("cancel", self._on_cancel_event),
                    ("region", self._on_region_event),
                )
            ]
            helpers = [asyncio.ensure_future(self._timers.run(self._spawn)), asyncio.ensure_future(self._retention_loop())]
            if self.contact_deadline_s is not None:
                self._contact = ContactMonitor(
                    self._probe_quorum, deadline_s=self.contact_deadline_s, on_change=self._contact_changed
                )
                helpers.append(asyncio.ensure_future(self._contact.run()))
            if self.region_endpoints:
                monitor = LatencyMonitor(self.client, self.router, self.region_endpoints)
                helpers += [asyncio.ensure_future(monitor.run()), asyncio.ensure_future(self._publish_latency())]
            stop = [asyncio.ensure_future(election.wait_lost()), asyncio.ensure_future(self._lost.wait())]
            everything = [*watchers, *helpers, *stop, self._fatal]
            done, _ = await asyncio.wait(everything, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                if fut in stop:
                    continue
                exc = fut.exception()
                if exc is not None:
                    raise exc
            raise LeadershipLost(f"leadership lost ({session.lost_reason or 'fence or key gone'})")
        finally:
            # safe mode: stop every write at once
            self._set_leader(False, 0)
            self._fence = None
            self._contact = None
            for fut in everything:
                fut.cancel()
            pending = list(self._drivers.values())
            for t in pending:
                t.cancel()
            await asyncio.gather(*everything, *pending, return_exceptions=True)
            self._drivers.clear()
            self._mailboxes.clear()
            self._sagas.clear()
            self._finished.clear()

    async def _rebuild(self) -> int:
        """Load the namespace at one revision (``_rebuild.py``: what a leader needs, read
        for size) and resume every saga in flight; return that revision."""
        snap = await read_snapshot(self.client, self.keys)
        rev = snap.revision
        writes = self._writes
        assert writes is not None
        for kv in snap.quarantine:
            self._quarantine.learn(kv)
        for kv in snap.regions:
            try:
                self._workers.put(self.keys.region_of(kv.key), kv.key, kv.value)
            except DecodeError as exc:
                self._poison("region", kv, str(exc))
        self.router.update(self._workers.regions())
        tasks: dict[bytes, KeyValue] = {}
        for kv in snap.tasks:
            try:
                self.keys.task_key(kv.key)
                tasks[kv.key] = kv
            except DecodeError as exc:
                self._poison("task", kv, str(exc))
        recorded: set[str] = set()

        def record_id(kv: KeyValue) -> str | None:
            try:
                sid = self.keys.saga_id(kv.key, "saga")
            except DecodeError as exc:
                self._poison("saga", kv, str(exc))
                return None
            recorded.add(sid)
            return sid

        for kv, done in snap.finished.values():
            if (sid := record_id(kv)) is not None:
                self._finished[sid] = done
        live: list[LeaderSaga] = []
        untouched: set[str] = set()
        specs: dict[tuple[str, str], Any] = {}
        for kv, raw in snap.live:
            if (sid := record_id(kv)) is None:
                continue
            try:
                if raw is None:
                    SagaRecord.from_json(kv.value)  # raises, naming what is wrong
                rec = SagaRecord.from_dict(raw)
            except NewerRecordError as exc:
                # a newer whizorch's record: not ours to drive or to overwrite (its tasks too)
                self._poison("saga", kv, f"{exc}; left untouched")
                untouched.add(sid)
                continue
            except DecodeError as exc:
                self._poison("saga", kv, str(exc))
                await self._replace_undecodable(sid, kv, str(exc))
                continue
            pin = (rec.saga, rec.version)
            if pin not in specs:
                try:
                    specs[pin] = await self._definitions.get(*pin)
                except DecodeError as exc:  # a published definition that does not parse
                    log.error("saga %s: its definition %s %s cannot be read: %s", rec.id, *pin, exc)
                    specs[pin] = None
            entry = LeaderSaga(rec, kv.mod_revision, specs[pin])
            for index, task in active_tasks(self.keys, rec).items():
                if tasks.pop(task.key, None) is not None:  # the rest: put again by the next commit
                    entry.tasks[index] = task
                    writes.track(task)
            self._keep(entry)
            live.append(entry)
        # the sagas in flight need their input and the results recorded so far
        inputs = await read_many(self.client, [self.keys.submit(e.record.id) for e in live], rev)
        wanted = [self.keys.results(r, e.record.id) for e in live for r in e.record.regions]
        found = await read_many(self.client, wanted, rev, prefix=True)
        now = time.time()
        cancels = {self.keys.saga_id(k, "cancel") for k in snap.cancels if _parses(self.keys, k, "cancel")}

        async def resume(entry: LeaderSaga) -> None:
            rec = entry.record
            sub = inputs.get(self.keys.submit(rec.id)) or []
            if sub:  # adopted, so it decoded once: read what it holds
                entry.input = SubmissionPayload.from_json_lenient(sub[0].value).input
            results = [kv for r in rec.regions for kv in found.get(self.keys.results(r, rec.id), [])]
            for rkv in results:
                self._learn_output(entry, rkv)
            try:
                if entry.definition is None:
                    await self._fail_unknown(entry, _unknown(rec.saga, rec.version))
                    return
                await self._resume(entry, results, rec.id in cancels, now)
            except PERMANENT as exc:
                # what retrying cannot fix (a write over etcd's limit) fails this saga,
                # as its driver would, not the rebuild (every next leader would stop on it)
                log.error("saga %s: cannot resume: %s; failing the saga", rec.id, exc)
                self._spawn(rec.id, Fail(f"could not resume: {exc}"))

        # concurrently (their writes share the leader's batches), a bounded number at
        # once; a transient error fails the rebuild (and the group: no resume left over)
        for i in range(0, len(live), 512):
            async with asyncio.TaskGroup() as group:
                for e in live[i : i + 512]:
                    group.create_task(resume(e))
        adopt: list[bytes] = []
        for key in snap.submits:
            try:
                if self.keys.saga_id(key, "submit") not in recorded:
                    adopt.append(key)
            except DecodeError:
                adopt.append(key)  # read below, and quarantined by the adoption
        for key, kvs in (await read_many(self.client, adopt, rev)).items():
            if kvs:
                try:
                    sid = self.keys.saga_id(key, "submit")
                    if sid in cancels:
                        self._early_cancel(sid)
                    self._spawn(sid, submit=kvs[0])
                except DecodeError as exc:
                    self._poison("submit", kvs[0], str(exc))
        # tasks no active run owns (a final saga's, a superseded run's, a saga gone):
        # withdrawn, so no worker runs them; each only as the snapshot saw it
        orphans = [kv for key, kv in tasks.items() if self.keys.task_key(key)[2] not in untouched]
        if orphans:
            await self._withdraw(orphans)
        return rev

    def _keep(self, entry: LeaderSaga) -> None:
        """Cache a saga: in full while in flight; once final, only what retention needs."""
        rec = entry.record
        if rec.is_final:
            self._sagas.pop(rec.id, None)
            self._finished[rec.id] = Finished(rec.status, rec.finished, entry.mod_revision, tuple(rec.regions))
        else:
            self._sagas[rec.id] = entry

    async def _withdraw(self, orphans: list[KeyValue]) -> None:
        writes = self._writes
        if writes is None:
            raise LeadershipLost("not leading")
        try:
            await asyncio.gather(*(
                writes.batcher.txn([Compare.mod_revision(kv.key, "==", kv.mod_revision)], [Op.delete(kv.key)])
                for kv in orphans
            ))  # fmt: skip
        except BatchRefused as exc:
            raise LeadershipLost("the leader fence refused a write") from exc

    @property
    def quarantined(self) -> dict[str, int]:
        """Input this node's leaderships quarantined, by kind (submit, saga, run,
        cancel, region): each key counted once."""
        return self._quarantine.counts

    def _poison(self, kind: str, kv: KeyValue, reason: str) -> None:
        """Quarantine input that does not parse (see ``_quarantine.py``) and skip it."""
        note = self._quarantine.note(kind, kv, reason)
        if note is None:
            return
        qkey, value = note

        async def write() -> None:
            fence = self._fence
            if fence is not None:
                await self.client.txn(
                    [fence.compare(), Compare.create_revision(qkey, "==", 0)], [Op.put(qkey, value)], idempotent=True
                )

        self._background.start(write, "quarantine-note")

    async def _resume(self, entry: LeaderSaga, results: list[KeyValue], cancelled: bool, now: float) -> None:
        """Feed what happened while nobody led; re-arm timers; put lost tasks again."""
        for rkv in sorted(results, key=lambda kv: kv.mod_revision):
            try:
                ev = self._result_event(rkv)
            except DecodeError as exc:
                self._poison("run", rkv, str(exc))
                continue
            await self._result_arrived(entry, ResultArrived(ev, rkv))
        # each _apply replaced entry.record: look at the record as it is now
        if cancelled and not entry.record.cancel_requested:
            await self._apply(entry, m.Cancel())
        rec = entry.record
        for index, st in enumerate(rec.steps):
            if st.waiting_region:
                # a wait for a region, in whatever state it began (a pending step's first
                # dispatch, a retry, a compensation of a done step): its timer died with
                # the last leader, so arm it again (the machine tells which run it guards)
                waiting = m.RUN if st.state in ("pending", "dispatched") else m.COMPENSATE
                at = (st.dispatched_at or now) + m.wait_limit_s(st, self.settings)
                self._arm(at, rec.id, m.Timer(index, waiting, st.run if waiting == m.RUN else st.comp_run, "no_region"))
                continue
            kind = m.RUN if st.state == "dispatched" else m.COMPENSATE if st.state == "compensating" else None
            if kind is None:
                continue
            run = st.run if kind == m.RUN else st.comp_run
            if st.retry_at is not None:
                self._arm(st.retry_at, rec.id, m.Timer(index, kind, run, "retry"))
                continue
            step = entry.definition.steps[index] if entry.definition else None
            timeout = (step.timeout_s if kind == m.RUN else step.compensation_timeout_s) if step else None
            if timeout is not None:
                at = (st.dispatched_at or now) + timeout + self.settings.dispatch_grace_s
                self._arm(at, rec.id, m.Timer(index, kind, run, "deadline"))
        # a step in a region that died while nobody led, or waiting for a region that the
        # rebuilt view may already have: RegionsChanged is sent only when the healthy set
        # changes, so without this the saga would wait for a change that never comes
        if any(
            s.waiting_region or (s.state in ("dispatched", "compensating") and s.region and not self.router.healthy(s.region))
            for s in rec.steps
        ):
            await self._apply(entry, m.RegionsChanged(frozenset(self.router.regions)))
        if set(active_tasks(self.keys, entry.record)) - set(entry.tasks) or self._unplaced(entry):
            # an active run's task is gone (its worker died while nobody led): put it on a
            # live worker of its region, same attempt (a new run by its fence token: no
            # retry is spent on a leader change); the deadline above still guards it
            await self._place(entry)

    def _unplaced(self, entry: LeaderSaga) -> bool:
        """An active run the record puts on no worker (a v1 record, or none was free)."""
        return any(
            st.worker is None and st.region is not None and st.retry_at is None and not st.waiting_region
            and st.state in ("dispatched", "compensating")
            for st in entry.record.steps
        ) and not entry.record.is_final

    async def _place(self, entry: LeaderSaga) -> None:
        """Commit the record unchanged but for the workers of runs whose task is gone."""
        async with entry.lock:
            rec = entry.record.clone()
            await self._commit(entry, rec, m.Transition(changed=True))

    # -- watches -----------------------------------------------------------------------

    async def _watch(self, kind: str, revision: int, handler: Callable[[WatchEvent], None]) -> None:
        async with self.client.watch(self.keys.prefix(kind), prefix=True, start_revision=revision + 1, prev_kv=True) as w:
            async for ev in w:
                try:
                    handler(ev)
                except DecodeError as exc:  # input that does not parse: quarantined, never fatal
                    self._poison(kind, ev.kv, str(exc))

    def _spawn(
        self, saga_id: str, event: m.Event | Fail | TaskGone | ResultArrived | None = None, *,
        submit: KeyValue | None = None,
    ) -> None:
        """Queue an event for a saga; its driver applies the saga's events one at a time,
        in order (an adoption is queued with ``submit``)."""
        box = self._mailboxes.get(saga_id)
        if box is None:
            box = self._mailboxes[saga_id] = collections.deque()
        box.append((event, submit))
        if saga_id not in self._drivers:
            task = asyncio.get_running_loop().create_task(self._drive(saga_id, box), name=f"whizorch-saga-{saga_id}")
            self._drivers[saga_id] = task

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
                    self._lost.set()
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
                    if self._fatal is not None and not self._fatal.done():
                        self._fatal.set_exception(exc)
                    return
                box.popleft()
                backoff.reset()
        finally:
            if self._drivers.get(saga_id) is asyncio.current_task():
                del self._drivers[saga_id]
                if not box and self._mailboxes.get(saga_id) is box:
                    del self._mailboxes[saga_id]

    async def _handle(
        self, saga_id: str, event: m.Event | Fail | TaskGone | ResultArrived | None, submit: KeyValue | None
    ) -> None:
        entry = self._sagas.get(saga_id)
        if isinstance(event, ResultArrived):
            if entry is not None:
                await self._result_arrived(entry, event)
            return
        if isinstance(event, TaskGone):
            if entry is not None:
                await self._task_gone(entry, event)
            return
        if isinstance(event, Fail):
            if entry is None:
                rec = failed_record(saga_id, "?", submit.create_revision if submit else 0, event.reason, time.time())
                await self._create_failed(LeaderSaga(rec, 0, None))
            else:
                await self._fail(entry, event.reason)
            return
        if submit is not None:
            if entry is None and saga_id not in self._finished:
                await self._adopt(saga_id, submit)
            return
        if entry is not None and event is not None:
            await self._apply(entry, event)

    def _on_submit_event(self, ev: WatchEvent) -> None:
        if ev.type is EventType.PUT and ev.kv.version == 1:
            sid = self.keys.saga_id(ev.kv.key, "submit")
            if sid not in self._sagas and sid not in self._finished:
                self._spawn(sid, submit=ev.kv)

    def _on_run_event(self, ev: WatchEvent) -> None:
        """A result (a worker's txn puts it and deletes the run's task)."""
        if ev.type is not EventType.PUT:
            return
        sid = self.keys.run_key(ev.kv.key)[1]
        if self._known(sid):
            # a DecodeError here: quarantined by the watch
            self._spawn(sid, ResultArrived(self._result_event(ev.kv), ev.kv))

    def _early_cancel(self, sid: str) -> None:
        self._early_cancels[sid] = None
        while len(self._early_cancels) > 4096:
            del self._early_cancels[next(iter(self._early_cancels))]

    def _known(self, sid: str) -> bool:
        """A saga this leader drives, or is adopting: its mailbox then holds the
        adoption, and an event queued behind it is applied once the record exists (a
        worker's result can arrive before the adoption's write is acknowledged)."""
        return sid in self._sagas or sid in self._mailboxes

    async def _result_arrived(self, entry: LeaderSaga, arrived: ResultArrived) -> None:
        """Apply a result, in the saga's order: by now the write that sent its run out
        is in the cache, so a result from a region the step was never sent to (which
        only that region's workers can write, under etcd roles) is quarantined."""
        ev, rec = arrived.result, entry.record
        if 0 <= ev.step < len(rec.steps) and ev.region not in rec.steps[ev.step].regions and not rec.is_final:
            self._poison("run", arrived.kv, f"a result from region {ev.region!r}, where step {ev.step} was never sent")
            return
        self._learn_output(entry, arrived.kv)
        await self._apply(entry, ev)

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
        got = await self.client.get(self.keys.result(st.region, rec.id, gone.step, gone.kind, gone.attempt))
        if got.kvs:
            await self._result_arrived(entry, ResultArrived(self._result_event(got.kvs[0]), got.kvs[0]))
            return
        task = entry.tasks.pop(gone.step, None)
        if task is not None:
            if self._writes is not None:
                self._writes.untrack(task)
        if gone.drained:
            # a worker that drained left a run it never started (it was given it as it
            # left): put it on another worker, same attempt (a new run by its token)
            await self._place(entry)
            return
        await self._apply(entry, m.ClaimLost(gone.step, gone.kind, gone.attempt))

    def _on_cancel_event(self, ev: WatchEvent) -> None:
        if ev.type is EventType.PUT:
            sid = self.keys.saga_id(ev.kv.key, "cancel")
            if self._known(sid):
                self._spawn(sid, m.Cancel())
            elif sid not in self._finished:
                self._early_cancel(sid)

    def _on_region_event(self, ev: WatchEvent) -> None:
        region = self.keys.region_of(ev.kv.key)
        before = frozenset(self.router.regions)
        could = {r: info.serves for r, info in self.router.regions.items()}
        if ev.type is EventType.DELETE:
            lease = ev.kv.key.rpartition(b"/")[2].decode(errors="replace")
            drained = bool(self._workers.workers(region).get(lease, {}).get("draining"))
            self._workers.delete(region, ev.kv.key)
            # its lease ended (or it was deleted): so did the tasks on that lease
            if self._writes is not None:
                self._writes.worker_gone(lease)
            for sid, entry in self._sagas.items():
                for index, task in entry.tasks.items():
                    if task.lease == lease:
                        self._spawn(sid, TaskGone(index, task.kind, task.attempt, lease, drained))
        else:
            self._workers.put(region, ev.kv.key, ev.kv.value)
        self.router.update(self._workers.regions())
        after = frozenset(self.router.regions)  # (a bad registration raised above: quarantined)
        can = {r: info.serves for r, info in self.router.regions.items()}
        if after != before:
            log.info("healthy regions: %s", sorted(after))
            self._emit(RegionsHealthy(healthy=tuple(sorted(after))))
        if can != could:
            # a region came or went, or what its workers can run changed (a worker with
            # a new definition version came): waiting steps may go now
            for sid, entry in self._sagas.items():
                if not entry.record.is_final:
                    self._spawn(sid, m.RegionsChanged(after))

    def _learn_output(self, entry: LeaderSaga, kv: KeyValue) -> None:
        try:
            payload = ResultPayload.from_json(kv.value)
            _region, _sid, index, kind, _attempt = self.keys.run_key(kv.key)
        except DecodeError:
            return
        if payload.ok and kind == m.RUN and entry.definition is not None:
            if 0 <= index < len(entry.definition.steps):
                name = entry.definition.steps[index].name
                entry.outputs[name] = payload.output
                entry.output_sizes[name] = len(kv.value)

    def _result_event(self, kv: KeyValue) -> m.Result:
        """The machine's event for a result key (DecodeError when it does not parse)."""
        payload = ResultPayload.from_json(kv.value)
        region, _sid, step, kind, attempt = self.keys.run_key(kv.key)
        return m.Result(step, kind, attempt, payload.ok, kv.key.decode(), payload.error, payload.retryable, region)

    # -- transitions ---------------------------------------------------------------------

    async def _adopt(self, saga_id: str, kv: KeyValue) -> None:
        try:
            sub = SubmissionPayload.from_json(kv.value)
            name, value, trace, version = sub.saga, sub.input, sub.trace, sub.version
        except DecodeError as exc:
            self._poison("submit", kv, str(exc))
            rec = failed_record(saga_id, "?", kv.create_revision, f"undecodable submission: {exc}", time.time())
            await self._create_failed(LeaderSaga(rec, 0, None))
            return
        try:
            definition = await (self._definitions.get(name, version) if version else self._definitions.current(name))
        except DecodeError as exc:  # a published definition that does not parse
            definition, unknown = None, f"the definition of saga {name!r} cannot be read: {exc}"
        else:
            unknown = _unknown(name, version or "")
        if definition is None:
            self._poison("submit", kv, unknown)
            rec = failed_record(saga_id, str(name), kv.create_revision, unknown, time.time())
            rec.trace = trace
            await self._create_failed(LeaderSaga(rec, 0, None, value))
            return
        ctx = self._event(saga_id, definition.name, kv.create_revision, "adopt", None, None, trace)
        created: list[LeaderSaga] = []

        async def final() -> SagaRecord:
            rec, tr = m.adopt(
                definition, saga_id=saga_id, txid=kv.create_revision, now=time.time(), route=self.router,
                settings=self.settings, trace=ctx.trace, term=self.term,
            )
            entry = LeaderSaga(rec, 0, definition, value)
            await self._create(entry, tr)
            created.append(entry)
            return entry.record

        await run_guarded(self.middleware, ctx, final)
        entry = created[0]
        self._emit(SagaAdopted(saga_id=saga_id, saga=name))
        if saga_id in self._early_cancels:
            del self._early_cancels[saga_id]
            self._spawn(saga_id, m.Cancel())  # asked before the leader saw the submission
        if entry.record.steps and entry.record.steps[0].waiting_region and self.router.regions:
            # the region view may have changed while this adoption was in flight (the
            # region watch can lag the submit watch), and RegionsChanged reaches only
            # sagas already cached: look once more, or the step waits for the next
            # region change or its no_region timeout
            self._spawn(saga_id, m.RegionsChanged(frozenset(self.router.regions)))

    async def _create_failed(self, entry: LeaderSaga) -> None:
        """Write a record that is failed from the start (undecodable or unknown type)."""
        rec = entry.record
        ctx = self._event(rec.id, rec.saga, rec.txid, "fail", None, None, dict(rec.trace))

        async def final() -> SagaRecord:
            await self._create(entry, m.Transition(changed=True))
            return entry.record

        await run_guarded(self.middleware, ctx, final)

    async def _create(self, entry: LeaderSaga, tr: m.Transition) -> None:
        """Write a new record (create-if-absent, fenced) and cache it."""
        sid = entry.record.id
        async with entry.lock:
            try:
                await self._commit(entry, entry.record, tr)
            except Conflict:
                # the txn's outcome is unknown, or the record exists: etcd decides
                await self._reload(entry)
                if entry.mod_revision == 0:
                    raise WhizorchError("the new saga record was not written", saga_id=sid) from None
        self._keep(entry)

    async def _apply(self, entry: LeaderSaga, event: m.Event) -> None:
        async with entry.lock:
            if not self.middleware:
                await self._apply_locked(entry, event)
                return
            if entry.definition is None or entry.record.is_final:
                return
            before = entry.record
            ctx = self._event(
                before.id, before.saga, before.txid, EVENT_NAMES.get(type(event), type(event).__name__), event, before,
                dict(before.trace),
            )

            async def final() -> SagaRecord | None:
                await self._apply_locked(entry, event)
                return entry.record if entry.record is not before else None

            await run_guarded(self.middleware, ctx, final)

    async def _apply_locked(self, entry: LeaderSaga, event: m.Event) -> None:
        """Apply one event (caller holds entry.lock); retries on a stale cache."""
        for _ in range(3):
            if entry.definition is None or entry.record.is_final:
                return
            # the machine works on a copy: the cache changes only once etcd has it
            rec = entry.record.clone()
            tr = m.apply(rec, entry.definition, event, now=time.time(), route=self.router, settings=self.settings)
            if not tr.changed and not tr.dispatch and not tr.delete_tasks:
                for at, timer in tr.timers:
                    self._arm(at, rec.id, timer)
                return
            try:
                await self._commit(entry, rec, tr)
                return
            except Conflict:
                await self._reload(entry)
        raise WhizorchError("saga record keeps changing under the leader", saga_id=entry.record.id)

    async def _reload(self, entry: LeaderSaga) -> None:
        """Our cache is stale (or a write's outcome unknown): read the record again, and
        which of its tasks exist, at one revision.

        A write whose answer was lost may have committed: the record then names the
        workers it chose, and the cache must know their tasks, or the next write would
        neither delete them (two live runs of a step) nor leave them be (the run put
        again elsewhere). A task that is gone with its run's result there was deleted by
        that result (its event follows): it counts as known, not as lost.
        """
        key = self.keys.saga(entry.record.id)
        for _ in range(5):
            cur = await self.client.get(key)
            if cur.kvs:
                entry.record = SagaRecord.from_json(cur.kvs[0].value)
                entry.mod_revision = cur.kvs[0].mod_revision
            else:
                entry.mod_revision = 0
            wanted = active_tasks(self.keys, entry.record) if entry.mod_revision else {}
            old = list(entry.tasks.values())
            reads = [Op.get(t.key, keys_only=True) for t in (*wanted.values(), *old)]
            reads += [Op.get(self.keys.result(t.region, entry.record.id, i, t.kind, t.attempt), keys_only=True) for i, t in wanted.items()]
            if not reads:
                return
            res = await self.client.txn([Compare.mod_revision(key, "==", entry.mod_revision)], reads)
            if not res.succeeded:
                continue  # the record moved between the two reads
            found = [isinstance(got, RangeResult) and bool(got.kvs) for got in res.responses]
            n = len(wanted)
            exists = {t.key for t, there in zip((*wanted.values(), *old), found, strict=False) if there}
            recorded = dict(zip(wanted, found[n + len(old) :], strict=True))
            tasks = {i: t for i, t in entry.tasks.items() if t.key in exists}
            tasks.update({i: t for i, t in wanted.items() if t.key in exists or recorded[i]})
            writes = self._writes
            if writes is not None:
                for t in entry.tasks.values():
                    writes.untrack(t)
                for t in tasks.values():
                    writes.track(t)
            entry.tasks = tasks
            return
        raise WhizorchError("saga record keeps changing under the leader", saga_id=entry.record.id)  # retried

    async def _commit(self, entry: LeaderSaga, rec: SagaRecord, tr: m.Transition) -> None:
        """Write a transition (``_leader_write.py``: fenced, batched, its runs placed on
        workers) and apply its effects here: cache, timers, events, lost runs.

        On success the cache takes ``rec``; on failure it is left as it was.
        """
        await self._await_contact()
        fence, writes = self._fence, self._writes
        if fence is None or writes is None or not self.is_leader_now():
            raise LeadershipLost("not leading")
        try:
            revision, unplaced = await writes.commit(entry, rec, tr, fence.token)
        except LeadershipLost:
            self._lost.set()
            raise
        entry.mod_revision = revision
        for at, timer in tr.timers:
            self._arm(at, rec.id, timer)
        for fo in tr.failovers:
            self._emit(StepFailedOver(
                saga_id=rec.id, step=fo["step"], from_region=fo["from"], to_region=fo["to"], reason=fo["reason"], at=fo["at"]
            ))  # fmt: skip
        for unmet in tr.unmet:
            self._emit(RegionPreferenceUnmet(
                saga_id=rec.id, saga=rec.saga, step=unmet["step"], wanted=unmet["wanted"], to_region=unmet["to"],
                reason=unmet["reason"],
            ))  # fmt: skip
        for gone in unplaced:
            # no live worker took the run (none left in its region, or it died as we
            # wrote): the machine decides, as for any lost worker
            self._spawn(rec.id, gone)
        if rec.is_final:
            self._keep(entry)
            self._emit(SagaFinished(saga_id=rec.id, saga=rec.saga, status=rec.status))

    async def _publish_latency(self) -> None:
        """Every few seconds, the measured and configured latencies from the home region
        under ``<ns>/latency`` (fenced), for ``whizorch status``."""
        while True:
            await asyncio.sleep(5.0)  # ok: the publishing period
            fence = self._fence
            if fence is None or self.in_safe_mode:
                continue
            home = self.router.home_region
            doc = {
                "from": home,
                "node": self.node_id,
                "at": round(time.time(), 3),
                "measured_ms": {r: round(ms, 2) for r, ms in sorted(self.router.measured_ms.items())},
                "configured_ms": {r: self.router.latency.get((home, r)) for r in sorted(self.region_endpoints) if home},
            }
            try:
                await self.client.txn(
                    [fence.compare()], [Op.put(self.keys.latency, encode_json(doc, what="latency"))], idempotent=True
                )
            except WhizorchError as exc:
                if not is_transient(exc):
                    raise
                log.info("could not publish latencies: %s", exc)

    async def _probe_quorum(self, timeout_s: float) -> None:
        """One quorum round trip: a linearizable read needs etcd's leader and a quorum."""
        await self.client.get(self.keys.leader + "/", prefix=True, limit=1, keys_only=True, timeout_s=timeout_s)

    def _contact_changed(self, ok: bool, seconds: float) -> None:
        if ok:
            self._emit(ContactRestored(node=self.node_id, term=self.term, paused_s=round(seconds, 4)))
        else:
            self._emit(SafeModeEntered(node=self.node_id, term=self.term, silent_s=round(seconds, 4)))

    async def _await_contact(self) -> None:
        """Before a write: wait while in safe mode (until contact returns, or the
        leadership ends and LeadershipLost is raised)."""
        contact = self._contact
        if contact is None or contact.ok.is_set():
            return
        back = asyncio.ensure_future(contact.ok.wait())
        gone = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({back, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (back, gone):
                f.cancel()
            await asyncio.gather(back, gone, return_exceptions=True)
        if not contact.ok.is_set() or contact is not self._contact:
            raise LeadershipLost("leadership ended in safe mode")

    @property
    def in_safe_mode(self) -> bool:
        """True while this leader has paused its writes for lack of quorum contact."""
        return self._contact is not None and not self._contact.ok.is_set()

    def is_leader_now(self) -> bool:
        """Leader by the election and the session's clock (checked before every write)."""
        return self._election is not None and self._election.is_leader and not self._lost.is_set()

    async def _fail_unknown(self, entry: LeaderSaga, reason: str) -> None:
        await self._fail(entry, reason)

    async def _fail(self, entry: LeaderSaga, reason: str) -> None:
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
        ctx = self._event(rec.id, rec.saga, rec.txid, "fail", None, before, dict(rec.trace))

        async def final() -> SagaRecord:
            async with entry.lock:
                await self._commit(entry, rec, m.Transition(changed=True, delete_tasks=withdraw))
            return entry.record

        try:
            await run_guarded(self.middleware, ctx, final)
        except Conflict:
            await self._reload(entry)
            raise WhizorchError("the saga record changed while failing it; trying again", saga_id=rec.id) from None

    async def _replace_undecodable(self, saga_id: str, kv: KeyValue, reason: str) -> None:
        """An undecodable record: replace it with a failed one that keeps the raw bytes."""
        rec = failed_record(saga_id, "?", 0, f"undecodable saga record: {reason}", time.time())
        rec.history.append({"event": "raw_record", "raw": kv.value.decode(errors="replace")[:4000]})
        entry = LeaderSaga(rec, kv.mod_revision, None)
        await self._commit(entry, rec, m.Transition(changed=True))
        self._keep(entry)

    # -- timers and retention --------------------------------------------------------

    def _arm(self, at: float, saga_id: str, timer: m.Timer) -> None:
        self._timers.arm(at, saga_id, timer)

    async def _retention_loop(self) -> None:
        """Delete terminal sagas older than ``retention_s`` (fenced), so the store stays bounded."""
        while True:
            await asyncio.sleep(min(60.0, max(0.2, self.retention_s / 4)))  # ok: periodic sweep
            now = time.time()
            for sid, done in list(self._finished.items()):
                if done.status != FAILED and done.finished is not None:
                    if now - done.finished >= self.retention_s:
                        try:
                            await self._purge(sid, done)
                        except LeadershipLost:
                            raise
                        except WhizorchError as exc:  # purged on a later sweep
                            log.warning("could not purge saga %s: %s", sid, exc)

    async def _purge(self, sid: str, done: Finished) -> None:
        await self._await_contact()
        fence = self._fence
        if fence is None:
            raise LeadershipLost("not leading")
        key = self.keys.saga(sid)
        res = await self.client.txn(
            [fence.compare(), Compare.mod_revision(key, "==", done.mod_revision)],
            [
                Op.delete(key),
                Op.delete(self.keys.submit(sid)),
                Op.delete(self.keys.cancel(sid)),
                *(Op.delete(self.keys.results(region, sid), prefix=True) for region in done.regions),
            ],
            idempotent=True,
        )
        if res.succeeded:
            self._finished.pop(sid, None)
            self._emit(SagaPurged(saga_id=sid))




def _parses(keys: Keys, key: bytes, kind: str) -> bool:
    try:
        keys.saga_id(key, kind)
    except DecodeError:
        return False
    return True


def _unknown(name: str, version: str) -> str:
    """Why a saga cannot be driven: no definition of it is known."""
    if version:
        return (
            f"saga {name!r} version {version!r} is not published: no orchestrator's App holds it and no client "
            "submitted it with its Saga object"
        )
    return f"no saga type {name!r} is registered: add it to the App of your orchestrators (or submit it with its Saga object)"
