"""Regional worker: runs the tasks the leader puts on its lease, records results once.

A worker registers ``<ns>/region/<region>/<lease hex>`` on its session's lease (its
liveness, with its capabilities: compliance tags, cost, capacity and load). The leader
puts each task it gives this worker on that same lease, under
``<ns>/task/<region>/<lease hex>/``: the task is the claim (no claim commit), and its
create revision is the run's fencing token (``ctx.fence_token``). The worker watches
that prefix, and for each task, under its concurrency limit:

1. runs the handler (``asyncio.timeout`` = the step's timeout; sync handlers in a
   thread);
2. records the result at most once per run: ``create_revision(task) == token and
   create_revision(result) == 0`` -> put the result, delete the task. Results of
   runs that end together share one txn (each a nested txn with its own compares).

Execution is not exclusive: a worker paused or cut off past its lease can still be
running a handler when the step is dispatched again elsewhere. What is guaranteed is
that its late result is refused by the claim fence, and that an async handler is
never resumed after the worker knows its session is lost (see ``_fencing.py``);
external effects are fenced with ``ctx.fence_token``.

The worker supervises itself: etcd trouble or a lost session ends the current session
(running handlers are cancelled; the lease's tasks go with it and the leader hands
them to other workers) and it registers again on a new lease at once, the old lease
revoked in the background. A bug ends the worker: ``join()`` and ``async with`` raise
it. ``aclose()`` drains: it marks its registration draining (the leader gives it no
new task), runs what it was given, then leaves (up to ``drain_timeout_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
import time
from collections.abc import Awaitable, Sequence
from typing import Any

from whizorch._check import is_int
from whizorch.coord import LeaseTiming, Session
from whizorch.errors import (
    ClosedError,
    CompactedError,
    ConfigError,
    DecodeError,
    RequestTooLargeError,
    WhizorchError,
)
from whizorch.etcd import EtcdClient, EventType
from whizorch.saga._definition import App
from whizorch.saga._keys import Keys
from whizorch.saga._middleware import Middleware, attach_middleware, check_middleware
from whizorch.saga._model import ResultPayload, TaskPayload, encode_json
from whizorch.saga._step_run import StepRunner
from whizorch.saga._supervise import (
    BackgroundTasks,
    Backoff,
    end_session,
    is_transient,
    role_lease,
    stop_role,
)

__all__ = ["Worker"]

log = logging.getLogger("whizorch.saga.worker")


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class Worker:
    """Runs the steps dispatched to one region. ``async with Worker(client, app, region="eu"):``"""

    def __init__(
        self,
        client: EtcdClient,
        app: App,
        /,
        *,
        region: str,
        namespace: str = "whizorch",
        worker_id: str | None = None,
        concurrency: int = 16,
        compliance: tuple[str, ...] | list[str] | frozenset[str] = (),
        cost: float = 0.0,
        lease: LeaseTiming | None = None,
        lease_ttl_s: int | None = None,
        keepalive_interval_s: float | None = None,
        step_down_margin_s: float | None = None,
        max_payload_bytes: int = 64 * 1024,
        drain_timeout_s: float = 30.0,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        if not isinstance(app, App):
            raise ConfigError("Worker needs a whizorch App", field="app", value=type(app).__name__)
        if not isinstance(region, str) or not region or "/" in region:
            raise ConfigError("region must be a non-empty name without '/'", field="region", value=region)
        if isinstance(compliance, str) or not all(isinstance(t, str) and t for t in compliance):
            raise ConfigError("compliance must be a collection of tag strings", field="compliance", value=compliance)
        if not is_int(concurrency, minimum=1):
            raise ConfigError("concurrency must be an int >= 1", field="concurrency", value=concurrency)
        self.client = client
        self.app = app
        self.region = region
        self.keys = Keys(namespace)
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{region}"
        self.concurrency = concurrency
        self.compliance = sorted(set(compliance))
        self.cost = float(cost)
        self.lease = role_lease(
            lease, ttl_s=lease_ttl_s, keepalive_interval_s=keepalive_interval_s, step_down_margin_s=step_down_margin_s
        )
        """How the lease behind this role's liveness is kept (see whizorch.coord.LeaseTiming)."""
        self.lease_ttl_s = self.lease.ttl_s
        self.max_payload_bytes = max_payload_bytes
        self.drain_timeout_s = drain_timeout_s
        self.middleware = check_middleware(middleware)
        """Around every handler call: ``async def mw(ctx: StepContext, call_next)``."""
        self._state = _State.UNOPENED
        self._task: asyncio.Task[None] | None = None
        self._running: dict[bytes, asyncio.Task[None]] = {}
        self._backlog: dict[bytes, tuple[TaskPayload, int]] = {}
        self._draining = asyncio.Event()
        self._session: Session | None = None
        self._crashed: asyncio.Future[None] | None = None
        self._background = BackgroundTasks(f"whizorch-worker-{region}")
        self._reported_load = -1.0
        self._done: dict[bytes, int] = {}
        """Tasks this session has run, by token, until their deletion is seen (a re-read
        of the tasks does not run them again; a task put anew is a new run)."""
        self._runner = StepRunner(client, app, region=region, worker_id=self.worker_id, middleware=self.middleware)
        """Runs one task's handler and records its result (``_step_run.py``)."""
        self.completed = 0
        """Runs this worker finished and recorded (for tests and metrics)."""

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Register and start claiming (returns once registered)."""
        if self._state is not _State.UNOPENED:
            raise ClosedError(f"Worker is {self._state.value}; a Worker starts once")
        self._state = _State.OPEN
        attach_middleware(self.middleware, self)
        self._crashed = asyncio.get_running_loop().create_future()
        registered = asyncio.get_running_loop().create_future()
        self._task = asyncio.get_running_loop().create_task(self._main(registered), name=f"whizorch-worker-{self.region}")
        done, _ = await asyncio.wait({registered, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done and not registered.done():
            await self.aclose()
            self._task.result()  # re-raise why it stopped

    async def aclose(self, *, drain: bool = True) -> None:
        """Stop claiming, let running handlers finish (drain), deregister. Idempotent."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        self._draining.set()
        if drain and self._task is not None and not self._task.done():
            # it marks itself draining, runs what it was given, then leaves by itself;
            # not registered (etcd does not answer), it leaves at once
            _, pending = await asyncio.wait({self._task}, timeout=self.drain_timeout_s)
            if pending:
                log.warning(
                    "worker %s: %d handlers still running, %d tasks not started after the drain timeout; cancelling",
                    self.worker_id, len(self._running), len(self._backlog),
                )
        task, self._task = self._task, None
        await stop_role(task, self._background)

    async def join(self) -> None:
        """Wait until the worker stops by itself, which only a fatal error does (a bug,
        bad configuration, refused credentials): it is raised here. Faults etcd or the
        network cause are waited out, so this waits for as long as the worker is open.
        """
        task = self._task
        if task is None:
            raise ClosedError(f"Worker is {self._state.value}; join() needs a started Worker")
        await asyncio.shield(task)

    @property
    def running(self) -> int:
        """Step handlers running now."""
        return len(self._running)

    @property
    def load(self) -> float:
        """Busy fraction of this worker's capacity."""
        return len(self._running) / self.concurrency

    # -- main loop ---------------------------------------------------------------------

    async def _main(self, registered: asyncio.Future[None]) -> None:
        backoff = Backoff()
        while not self._draining.is_set():
            session = Session(self.client, timing=self.lease)
            try:
                if not await self._unless_draining(self._open(session)):
                    return  # closed before it could register: nothing to drain
                backoff.reset()
                if not registered.done():
                    registered.set_result(None)
                await self._serve(session)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_transient(exc):
                    log.error("worker %s: stopping on a fatal error: %r", self.worker_id, exc)
                    raise
                log.warning("worker %s: %s; registering again", self.worker_id, exc)
            finally:
                self._session = None  # first: a cancelled run's finally then starts no other
                await self._cancel_running()
                await end_session(session, self._background)
            if not self._draining.is_set():
                await self._unless_draining(asyncio.sleep(backoff.next_s()))  # ok: backoff before registering again

    async def _open(self, session: Session) -> None:
        await session.open()
        self._session = session
        await self._register(session)

    async def _unless_draining(self, work: Awaitable[None]) -> bool:
        """Await ``work`` unless the worker starts closing first (then cancel it and
        return False): a worker that etcd does not answer yet closes at once."""
        task = asyncio.ensure_future(work)
        closing = asyncio.ensure_future(self._draining.wait())
        try:
            await asyncio.wait({task, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            if not task.done():
                task.cancel()
            await asyncio.gather(closing, return_exceptions=True)
        if task.cancelled() or not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return False
        task.result()
        return True

    async def _register(self, session: Session) -> None:
        await self.client.put(
            self.keys.region(self.region, session.lease_id), self._capabilities(), lease=session.lease_id,
            idempotent=True, timeout_s=session.call_timeout_s(),
        )
        log.info("worker %s registered in region %s (lease %x)", self.worker_id, self.region, session.lease_id)

    def _capabilities(self) -> bytes:
        self._reported_load = round(self.load, 2)
        return encode_json(
            {
                "worker": self.worker_id,
                "region": self.region,
                "compliance": self.compliance,
                "cost": self.cost,
                "concurrency": self.concurrency,
                "load": self._reported_load,
                "draining": self._draining.is_set(),
                "sagas": self.app.served(),
            },
            what="worker capabilities",
        )

    async def _serve(self, session: Session) -> None:
        assert self._crashed is not None
        lost = asyncio.ensure_future(session.wait_lost())
        draining = asyncio.ensure_future(self._drain(session))
        loads = asyncio.ensure_future(self._report_load(session))
        ends: set[asyncio.Future[Any]] = {lost, draining, loads, self._crashed}
        stop = asyncio.ensure_future(asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED))
        try:
            while not stop.done():
                try:
                    await self._watch_tasks(session, stop)
                except CompactedError as exc:
                    # the watch fell behind a compaction: read the tasks again, same session
                    log.warning("worker %s: %s; reading the tasks again", self.worker_id, exc)
            if self._crashed.done():
                self._crashed.result()  # a run's bug ends the worker
            if loads.done():
                loads.result()
            if draining.done() and not draining.cancelled() and draining.exception() is not None:
                draining.result()
            if lost.done():
                raise WhizorchError(f"worker session lost: {session.lost_reason}", lease=session.lease_id)
            # draining: keep running handlers, claim nothing new
        finally:
            for fut in (lost, draining, loads, stop):
                fut.cancel()
            await asyncio.gather(lost, draining, loads, stop, return_exceptions=True)
            if self._draining.is_set() and self._running:
                await asyncio.wait(set(self._running.values()), timeout=self.drain_timeout_s)

    async def _watch_tasks(self, session: Session, stop: asyncio.Future[Any]) -> None:
        """Read the tasks on this session's lease, then follow them until ``stop`` is done."""
        prefix = self.keys.worker_tasks(self.region, session.lease_id)
        snapshot = await self.client.get(prefix, prefix=True)
        self._backlog.clear()
        for kv in snapshot.kvs:
            self._offer(kv.key, kv.value, kv.create_revision)
        self._start_backlog(session)
        async with self.client.watch(prefix, prefix=True, start_revision=snapshot.header.revision + 1) as watch:
            while (ev := await watch.next_unless(stop)) is not None:
                if ev.type is EventType.DELETE:
                    self._backlog.pop(ev.kv.key, None)  # withdrawn before it started
                    self._done.pop(ev.kv.key, None)  # gone for good: the set stays small
                else:
                    self._offer(ev.kv.key, ev.kv.value, ev.kv.create_revision)
                self._start_backlog(session)

    async def _drain(self, session: Session) -> None:
        """Once draining: say so in the registration (the leader stops giving this
        worker tasks), run what it was given, then end the session's serving."""
        await self._draining.wait()
        try:
            await self.client.put(
                self.keys.region(self.region, session.lease_id), self._capabilities(), lease=session.lease_id,
                idempotent=True, timeout_s=session.call_timeout_s(),
            )
        except WhizorchError as exc:
            if not is_transient(exc):
                raise
            log.info("worker %s: could not mark itself draining: %s", self.worker_id, exc)
        # a task the leader gave before it saw the mark may still be on its way
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 0.2:
            await asyncio.sleep(0.05)  # ok: polling for the end of the drain
            if self._running or self._backlog:
                quiet_since = time.monotonic()

    async def _report_load(self, session: Session) -> None:
        """Publish the load when it moved, at most every half second (a failed report
        is tried again on the next tick; the registration itself lives on the lease)."""
        while True:
            await asyncio.sleep(0.5)  # ok: rate limit of load reports
            if abs(round(self.load, 2) - self._reported_load) >= 0.1:
                try:
                    await self.client.put(
                        self.keys.region(self.region, session.lease_id), self._capabilities(), lease=session.lease_id,
                        idempotent=True,
                    )
                except WhizorchError as exc:
                    if not is_transient(exc):
                        raise
                    self._reported_load = -1.0
                    log.info("worker %s: could not report its load: %s", self.worker_id, exc)

    def _offer(self, key: bytes, value: bytes, token: int) -> None:
        if self._done.get(key) == token:
            return  # this run is here already (a re-read of the tasks)
        try:
            task = TaskPayload.from_json(value)
        except DecodeError as exc:
            log.error("worker %s: undecodable task %r: %s", self.worker_id, key, exc)
            return
        self._backlog[key] = (task, token)

    def _start_backlog(self, session: Session) -> None:
        """Start the tasks given to this worker while there is room."""
        if session.is_lost:
            return
        for key in list(self._backlog):
            if len(self._running) >= self.concurrency:
                return
            if key in self._running:
                continue  # the same key put anew: its new run starts when this one ends
            task, token = self._backlog.pop(key)
            # marked before it runs: the deletion its own result txn makes may be seen
            # before that txn's answer, and must find the mark to clear it
            self._done[key] = token
            run = asyncio.get_running_loop().create_task(
                self._run(session, key, task, token), name=f"whizorch-step-{task.saga_id}-{task.step}"
            )
            self._running[key] = run
            run.add_done_callback(self._check_run)

    def _check_run(self, run: asyncio.Task[None]) -> None:
        """A run that ended on anything but its own handled outcome is a bug: it ends
        the worker (never a step silently stranded)."""
        if run.cancelled() or run.exception() is None:
            return
        exc = run.exception()
        log.error("worker %s: a run failed unexpectedly: %r", self.worker_id, exc)
        if self._crashed is not None and not self._crashed.done():
            assert exc is not None
            self._crashed.set_exception(exc)

    async def _cancel_running(self) -> None:
        self._backlog.clear()
        running = list(self._running.values())
        for t in running:
            t.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        self._running.clear()
        self._backlog.clear()
        self._done.clear()  # the session's tasks went with its lease

    # -- one run ---------------------------------------------------------------------

    async def _run(self, session: Session, key: bytes, task: TaskPayload, token: int) -> None:
        started = time.time()
        try:
            outcome = await self._runner.execute(session, task, key, token)
            if outcome is None:
                return  # stopped: the session is lost, so the claim may be gone
            result = ResultPayload(
                ok=outcome.ok, output=outcome.output, error=outcome.error, error_type=outcome.error_type,
                retryable=outcome.retryable, traceback=outcome.traceback,
                worker=self.worker_id, region=self.region, started=started, ended=time.time(), fence=token,
            )
            try:
                data = result.to_json(self.max_payload_bytes)
            except (ConfigError, RequestTooLargeError) as exc:  # not JSON, or over the limit
                data = self._runner.failure_result(str(exc), type(exc).__name__, started, token)
            result_key = self.keys.result(self.region, task.saga_id, task.step, task.kind, task.attempt)
            res = await self._runner.record(session, key, token, result_key, data, started)
            if res.succeeded:
                self.completed += 1
            else:
                log.warning(
                    "worker %s: result of %s step %d (%s #%d) refused: task withdrawn or result exists",
                    self.worker_id, task.saga_id, task.step, task.kind, task.attempt,
                )
        except asyncio.CancelledError:
            raise
        except WhizorchError as exc:
            if not is_transient(exc):
                raise
            # the task goes with the lease; the leader hands the run to another worker
            log.warning("worker %s: could not record %s step %d: %s", self.worker_id, task.saga_id, task.step, exc)
        finally:
            self._running.pop(key, None)
            if self._session is session:
                self._start_backlog(session)
