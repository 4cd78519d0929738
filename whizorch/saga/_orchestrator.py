"""The orchestrator: campaigns for its share of the shards; each shard's leader drives
that shard's sagas.

A namespace is cut into shards (``<ns>/meta``; docs/design.md, "Shards"). Every
orchestrator registers on its session's lease (``<ns>/orch/<lease hex>``), computes the
same assignment of shards to the live orchestrators (``_shards.assign``) and campaigns
for its own; it resigns the shards it leads that are no longer its, so a shard is
handed over by resigning, never by two leaders at once. One term of one shard is a
:class:`~whizorch.saga.leader.ShardLeader`, built when the shard is won and dropped
when it is lost: it takes the shard over (reading only what is in flight), then drives
its sagas, every write fenced by the shard's election key.

Per process: one session (all its campaigns ride its lease), one watch per kind of
input (submissions, results, cancels: each event handed to the leader of its saga's
shard; worker registrations: one view for every shard), the split-brain gate (safe
mode pauses every shard's writes) and, with shard 0, Raft-leader locality and the
latency monitor. Faults etcd or the network cause are waited out (the node campaigns
again); only a bug or bad configuration ends it (``join()`` and ``async with`` raise it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from whizorch._check import is_int
from whizorch.coord import Election, Fence, LeaseTiming, Session
from whizorch.errors import ClosedError, ConfigError, DecodeError, WhizorchError
from whizorch.etcd import Compare, EtcdClient, EventType, Op, WatchEvent
from whizorch.saga import _machine as m
from whizorch.saga._contact import ContactGate
from whizorch.saga._definition import App
from whizorch.saga._definitions import Definitions
from whizorch.saga._events import (
    ContactRestored,
    LeadershipChanged,
    OrchestratorEvent,
    RaftLeaderMoved,
    RegionsHealthy,
    SafeModeEntered,
)
from whizorch.saga._keys import Keys
from whizorch.saga._latency import LatencyMonitor
from whizorch.saga._locality import bring_raft_leader
from whizorch.saga._middleware import (
    Middleware,
    attach_middleware,
    check_middleware,
    leadership_changed,
)
from whizorch.saga._model import encode_json
from whizorch.saga._quarantine import Quarantine
from whizorch.saga._router import Router
from whizorch.saga._shards import ShardBoard, open_namespace, shard_of
from whizorch.saga._supervise import (
    BackgroundTasks,
    Backoff,
    end_session,
    is_transient,
    role_lease,
    stop_role,
)
from whizorch.saga._view import Workers
from whizorch.saga.leader import LeaderEnv, LeadershipLost, RegionChange, ShardLeader

__all__ = ["Orchestrator"]

log = logging.getLogger("whizorch.saga.orchestrator")

_DEFAULT_SETTINGS = m.Settings()
_KINDS = ("submit", "run", "cancel", "region", "orch", "leader")


class Orchestrator:
    """One orchestrator node. ``async with Orchestrator(client, app):`` campaigns for its
    share of the namespace's shards and drives the sagas of those it leads until closed."""

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
        shards: int = 4,
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
        if not is_int(shards, minimum=1) or shards > 1024:
            raise ConfigError("shards must be an int from 1 to 1024", field="shards", value=shards)
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
        self.region_endpoints = {str(r): tuple(eps) for r, eps in (region_endpoints or {}).items()}
        """Each region's own etcd members (``[regions.<name>] endpoints``): while it
        leads shard 0, the round trip to each is measured for the router."""
        self.raft_leader_locality = raft_leader_locality
        """On winning shard 0, move etcd's Raft leadership to a member of the router's
        home region when one is fit (see ``_locality.py``)."""
        self.shards_wanted = shards
        """The shard count a namespace gets when this node creates it (an existing
        namespace keeps its own: ``shard_count``)."""
        self.shard_count = 0
        """The namespace's shard count (0 until read)."""
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._definitions = Definitions(client, self.keys, app)
        self._published = False
        self._quarantine = Quarantine(self.keys, self.node_id, self._emit)
        self._background = BackgroundTasks(f"whizorch-orchestrator-{self.node_id}")
        self._contact = ContactGate(self._probe_quorum, deadline_s=contact_deadline_s, on_change=self._contact_changed)
        self._terms: dict[int, ShardLeader] = {}
        self._mine: set[int] = set()
        """The shards assigned to this node now."""
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
        """Stop driving, resign every shard and close the session. Idempotent."""
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
        """Return once this node leads every shard assigned to it (all of them when it
        is the only orchestrator)."""
        async with asyncio.timeout(timeout_s):
            while not (self._mine and all(k in self._terms and self._terms[k].ready for k in self._mine)):
                self.leader_changed.clear()
                await self.leader_changed.wait()

    # -- state -----------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True while this node leads at least one shard (and has taken it over)."""
        return any(t.ready for t in list(self._terms.values()))

    @property
    def term(self) -> int:
        """The term (fencing token) of the lowest shard this node leads; 0 when none."""
        led = self.shards
        return led[min(led)] if led else 0

    @property
    def shards(self) -> dict[int, int]:
        """The shards this node leads now, with the term of each."""
        return {k: t.term for k, t in sorted(self._terms.items()) if t.ready}

    @property
    def in_safe_mode(self) -> bool:
        """True while this node has paused its writes for lack of quorum contact."""
        return self._contact.in_safe_mode

    @property
    def quarantined(self) -> dict[str, int]:
        """Input this node's leaderships quarantined, by kind (submit, saga, run,
        cancel, region, task): each key counted once."""
        return self._quarantine.counts

    def in_flight(self) -> dict[str, int]:
        """Sagas this node drives that are not final, by status (empty when not leading)."""
        counts: dict[str, int] = {}
        for t in list(self._terms.values()):
            for status, n in t.in_flight().items():
                counts[status] = counts.get(status, 0) + n
        return counts

    def waiting(self) -> dict[str, int]:
        """Steps of the sagas this node drives that wait for a region or for a worker
        with their definition, by cause (empty when not leading)."""
        counts: dict[str, int] = {}
        for t in list(self._terms.values()):
            for cause, n in t.waiting().items():
                counts[cause] = counts.get(cause, 0) + n
        return counts

    def _emit(self, event: OrchestratorEvent) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # an observer's bug must not stop the driver
                log.exception("on_event callback failed")

    def _leading(self, shard: int, term: int, leading: bool) -> None:
        self.leader_changed.set()
        self._emit(LeadershipChanged(leading=leading, node=self.node_id, term=term if leading else 0, shard=shard))
        leadership_changed(self.middleware, leading, term, self.node_id)

    # -- the session -----------------------------------------------------------------

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
                self.shard_count = await open_namespace(self.client, self.keys, shards=self.shards_wanted)
                await self._serve(session, backoff)
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

    async def _serve(self, session: Session, backoff: Backoff) -> None:
        """Register, read the workers and members, watch, and campaign for this node's
        shards, until the session ends (raised) or the node closes (cancelled)."""
        keys, client = self.keys, self.client
        workers = Workers()
        env = LeaderEnv(
            client=client, keys=keys, node_id=self.node_id, shards=self.shard_count, definitions=self._definitions,
            router=self.router, workers=workers, settings=self.settings, middleware=self.middleware, emit=self._emit,
            quarantine=self._quarantine, contact=self._contact, retention_s=self.retention_s,
            background=self._background,
        )
        me = f"{session.lease_id:x}"
        await client.put(
            keys.orchestrator(session.lease_id), encode_json({"node": self.node_id, "since": round(time.time(), 3)}, what="member"),
            lease=session.lease_id, idempotent=True, timeout_s=session.call_timeout_s(),
        )
        regions = await client.get(keys.prefix("region"), prefix=True)
        rev = regions.header.revision
        orchs, elections = await asyncio.gather(
            client.get(keys.prefix("orch"), prefix=True, revision=rev),
            client.get(keys.prefix("leader"), prefix=True, revision=rev),
        )
        for kv in regions.kvs:
            with contextlib.suppress(DecodeError):  # a bad registration: quarantined by a term's takeover
                workers.put(keys.region_of(kv.key), kv.key, kv.value)
        self.router.update(workers.regions())
        board = ShardBoard(keys, self.shard_count)
        for kv in orchs.kvs:
            board.member(kv.key, kv.value)
        for kv in elections.kvs:
            board.candidate(kv.key, kv.create_revision)
        campaigns: dict[int, asyncio.Task[None]] = {}
        withdrawals: dict[int, asyncio.Task[None]] = {}
        """Shards whose election holds this session's key while no campaign runs for them."""
        fatal: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stopping = False

        def reconcile() -> None:
            self._mine = board.mine(me)
            # a shard whose stray key is being withdrawn is campaigned for once it is gone
            for k in sorted(self._mine - campaigns.keys() - withdrawals.keys()):
                task = asyncio.get_running_loop().create_task(self._shard(env, session, k), name=f"whizorch-shard-{k}")
                task.add_done_callback(functools.partial(done, k, campaigns))
                campaigns[k] = task
            for k in sorted(campaigns.keys() - self._mine):
                campaigns[k].cancel()  # its term ends and resigns: the assigned node's campaign wins
            tidy()
            self.leader_changed.set()

        def tidy() -> None:
            """No key of this session stays in the election of a shard it does not
            campaign for. A resign or a withdrawal etcd did not answer leaves one behind,
            and so does a campaign's put carried out after the campaign ended (sent to a
            member that was paused); an orchestrator's session outlives its shards, so
            the key would lead the shard, or come to, with nobody driving it."""
            for k in sorted(board.held(me) - campaigns.keys() - withdrawals.keys()):
                key = f"{keys.shard_leader(k)}/{me}".encode()
                task = asyncio.get_running_loop().create_task(self._withdraw(session, key, k), name=f"whizorch-withdraw-{k}")
                task.add_done_callback(functools.partial(done, k, withdrawals))
                withdrawals[k] = task

        def done(k: int, tasks: dict[int, asyncio.Task[None]], task: asyncio.Task[None]) -> None:
            if tasks.get(k) is task:
                del tasks[k]
            if not task.cancelled() and task.exception() is not None and not fatal.done():
                fatal.set_exception(task.exception())  # type: ignore[arg-type]
            elif not stopping and not fatal.done() and not session.is_lost:
                reconcile()  # campaign again if the shard is still ours; withdraw a key left behind

        def on_member(ev: WatchEvent) -> None:
            board.member(ev.kv.key, None if ev.type is EventType.DELETE else ev.kv.value)
            reconcile()

        def on_election(ev: WatchEvent) -> None:
            if board.candidate(ev.kv.key, None if ev.type is EventType.DELETE else ev.kv.create_revision):
                reconcile()  # a shard was won or left: shares may settle differently
            else:
                tidy()

        handlers: dict[str, Callable[[WatchEvent], None]] = {
            "submit": lambda ev: self._to_shard("submit", ev),
            "run": lambda ev: self._to_shard("run", ev),
            "cancel": lambda ev: self._to_shard("cancel", ev),
            "region": lambda ev: self._on_region(env, ev),
            "orch": on_member,
            "leader": on_election,
        }
        watchers = [asyncio.ensure_future(self._watch(kind, rev, handlers[kind])) for kind in _KINDS]
        lost = asyncio.ensure_future(session.wait_lost())
        backoff.reset()
        reconcile()
        everything: list[asyncio.Future[Any]] = [*watchers, lost, fatal]
        try:
            done_, _ = await asyncio.wait(everything, return_when=asyncio.FIRST_COMPLETED)
            for fut in done_:
                if fut is not lost and not fut.cancelled() and fut.exception() is not None:
                    raise fut.exception()  # type: ignore[misc]
            raise LeadershipLost(f"session lost ({session.lost_reason or 'its lease ended'})")
        finally:
            stopping = True
            self._mine = set()
            running = [*campaigns.values(), *withdrawals.values()]
            for t in [*running, *watchers, lost]:
                t.cancel()
            await asyncio.gather(*running, *watchers, lost, return_exceptions=True)
            if not fatal.done():
                fatal.cancel()
            self.leader_changed.set()

    async def _watch(self, kind: str, revision: int, handler: Callable[[WatchEvent], None]) -> None:
        async with self.client.watch(self.keys.prefix(kind), prefix=True, start_revision=revision + 1, prev_kv=True) as w:
            async for ev in w:
                handler(ev)

    # -- one shard -------------------------------------------------------------------

    async def _shard(self, env: LeaderEnv, session: Session, shard: int) -> None:
        """Campaign for one shard and lead it, term after term, while it is this node's
        (cancelled when it is not: the term ends and the shard is resigned)."""
        backoff = Backoff()
        while not session.is_lost:
            election = Election(session, self.keys.shard_leader(shard))
            term: ShardLeader | None = None
            helpers: list[asyncio.Future[Any]] = []
            try:
                fence = await election.campaign(self.node_id)
                backoff.reset()
                term = ShardLeader(env, shard, fence, election, on_ready=self._ready)
                self._terms[shard] = term
                if shard == 0:
                    helpers = await self._shard_zero(fence, term)
                self._contact.up()  # the split-brain probe runs while this node leads a shard
                await term.run()
            except LeadershipLost as exc:
                log.warning("orchestrator %s: shard %d: %s", self.node_id, shard, exc)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("orchestrator %s: shard %d: %s; campaigning again", self.node_id, shard, exc)
            finally:
                for h in helpers:
                    h.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
                if term is not None:
                    if self._terms.get(shard) is term:
                        del self._terms[shard]
                    if not self._terms:
                        await self._contact.down()
                    if term.ready:
                        self._leading(shard, term.term, False)
                with contextlib.suppress(WhizorchError):
                    await election.resign()  # skipped when the session is lost
            await asyncio.sleep(backoff.next_s())  # ok: backoff before campaigning again

    async def _withdraw(self, session: Session, key: bytes, shard: int) -> None:
        """Delete this session's ``key`` from ``shard``'s election (guarded by its lease:
        only ours), retried while the session lives."""
        backoff = Backoff()
        while not session.is_lost:
            try:
                await self.client.txn([Compare.lease(key, "==", session.lease_id)], [Op.delete(key)], idempotent=True)
                return
            except WhizorchError as exc:
                if not is_transient(exc):
                    raise
                log.warning("orchestrator %s: shard %d: could not withdraw its election key: %s; retrying",
                            self.node_id, shard, exc)
            await asyncio.sleep(backoff.next_s())  # ok: backoff before asking etcd again

    def _ready(self, term: ShardLeader) -> None:
        self._leading(term.shard, term.term, True)

    async def _shard_zero(self, fence: Fence, term: ShardLeader) -> list[asyncio.Future[Any]]:
        """What the leader of shard 0 does for the whole deployment: bring etcd's Raft
        leader home (once per term, before any write of the term) and measure latencies."""
        home = self.region_endpoints.get(self.router.home_region or "", ())
        if self.raft_leader_locality and home:
            # a move stalls writes in flight for as long as an etcd election would: the
            # split-brain probe (running if this node leads other shards) excuses it
            with self._contact.excused():
                locality = await bring_raft_leader(self.client, home, timeout_s=5.0)
            self._emit(RaftLeaderMoved(
                node=self.node_id, outcome=locality.outcome.value, before=locality.leader_before,
                after=locality.leader_after, took_s=round(locality.took_s, 3),
            ))  # fmt: skip
        if not self.region_endpoints:
            return []
        latency = LatencyMonitor(self.client, self.router, self.region_endpoints)
        publish = latency.publish(
            self.keys.latency, fence, node=self.node_id, paused=lambda: self.in_safe_mode or not term.ready
        )
        return [asyncio.ensure_future(latency.run()), asyncio.ensure_future(publish)]

    # -- input -----------------------------------------------------------------------

    def _to_shard(self, kind: str, ev: WatchEvent) -> None:
        """Hand a submission, result or cancel to the leader of its saga's shard here
        (a key that does not parse goes to shard 0's, which quarantines it)."""
        if not self._terms:
            return  # leading nothing (a standby): nothing to parse
        try:
            sid = self.keys.run_key(ev.kv.key)[1] if kind == "run" else self.keys.saga_id(ev.kv.key, kind)
            shard = shard_of(sid, self.shard_count)
        except DecodeError:
            shard = 0
        term = self._terms.get(shard)
        if term is not None:
            term.deliver(kind, ev)

    def _on_region(self, env: LeaderEnv, ev: WatchEvent) -> None:
        """A worker registered, reported its load, or left: the process's view changes
        once, and every term hears what matters to it."""
        keys, workers = self.keys, env.workers
        try:
            region = keys.region_of(ev.kv.key)
            before = frozenset(self.router.regions)
            could = {r: info.serves for r, info in self.router.regions.items()}
            lease: str | None = None
            drained = False
            if ev.type is EventType.DELETE:
                lease = ev.kv.key.rpartition(b"/")[2].decode(errors="replace")
                drained = bool(workers.workers(region).get(lease, {}).get("draining"))
                workers.delete(region, ev.kv.key)
            else:
                workers.put(region, ev.kv.key, ev.kv.value)
        except DecodeError as exc:
            term = self._terms.get(min(self._terms)) if self._terms else None
            if term is not None:
                term.poison("region", ev.kv, str(exc))
            return
        self.router.update(workers.regions())
        after = frozenset(self.router.regions)
        can = {r: info.serves for r, info in self.router.regions.items()}
        if after != before:
            log.info("healthy regions: %s", sorted(after))
            self._emit(RegionsHealthy(healthy=tuple(sorted(after))))
        if lease is None and can == could:
            return  # a load report: nothing for the terms
        change = RegionChange(ev.kv.mod_revision, lease, drained, after if can != could else None)
        for term in list(self._terms.values()):
            term.deliver("region", change)

    # -- shard 0's extras --------------------------------------------------------------

    async def _probe_quorum(self, timeout_s: float) -> None:
        """One quorum round trip: a linearizable read needs etcd's leader and a quorum."""
        await self.client.get(self.keys.leader + "/", prefix=True, limit=1, keys_only=True, timeout_s=timeout_s)

    def _contact_changed(self, ok: bool, seconds: float) -> None:
        if ok:
            self._emit(ContactRestored(node=self.node_id, term=self.term, paused_s=round(seconds, 4)))
        else:
            self._emit(SafeModeEntered(node=self.node_id, term=self.term, silent_s=round(seconds, 4)))
