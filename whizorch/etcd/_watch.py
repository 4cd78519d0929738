"""Watches: many watches multiplexed on one gRPC Watch stream per client.

The stream is driven by one task the client owns. Creates are sent one at a time (the
server answers each with ``created`` in order, which is how a response is matched to
its watch). When the stream breaks (member killed, ``hasleader`` cancellation when the
member loses its leader, network), every watch is re-created on the next endpoint from
*its last delivered revision + 1*, so no event is lost or repeated. A watch whose
history was compacted ends with :class:`~whizorch.errors.CompactedError`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from whizorch._check import is_int
from whizorch.errors import (
    AuthError,
    ClosedError,
    CompactedError,
    ConfigError,
    EtcdError,
    WhizorchError,
)
from whizorch.etcd import _errors
from whizorch.etcd._methods import METHODS
from whizorch.etcd._proto import rpc_pb2
from whizorch.etcd._types import KeyLike, WatchEvent, key_bytes, prefix_end, to_bytes, watch_event

if TYPE_CHECKING:
    from whizorch.etcd._client import EtcdClient

__all__ = ["Watch", "Watcher"]

log = logging.getLogger("whizorch.etcd.watch")

_END = object()


class Watch:
    """One watch; an async context manager and an async iterator of :class:`WatchEvent`.

    ``last_revision`` is the revision of the last event delivered (or the revision the
    watch is known to be current at, from progress notifications).
    """

    def __init__(
        self,
        watcher: Watcher,
        key: KeyLike,
        *,
        prefix: bool,
        range_end: bytes | None,
        start_revision: int,
        prev_kv: bool,
        progress_notify: bool,
    ) -> None:
        if not is_int(start_revision, minimum=0):
            raise ConfigError(
                "start_revision must be a non-negative int", field="start_revision", value=start_revision
            )
        kb = to_bytes(key, "key") if prefix else key_bytes(key)
        self._watcher = watcher
        self.key = kb or b"\0"
        self.range_end = prefix_end(kb) if (prefix and kb) else (b"\0" if prefix else (range_end or b""))
        self.prev_kv = prev_kv
        self.progress_notify = progress_notify
        # the next revision this watch needs; 0 until the server tells us "now"
        self.next_revision = start_revision
        self.watch_id: int | None = None
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self._registered = False
        self._closed = False
        self._created = asyncio.Event()  # set once etcd acknowledged (or refused) the watch
        # the token of the stream on which etcd last refused to create this watch
        self._refused_token: str | None = None

    @property
    def last_revision(self) -> int:
        """The newest revision this watch has seen everything up to (0: not yet known)."""
        return max(0, self.next_revision - 1)

    async def __aenter__(self) -> Watch:
        if self._registered or self._closed:
            raise ClosedError("a Watch is entered once")
        self._registered = True
        await self._watcher.add(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel the watch (idempotent)."""
        if not self._closed:
            self._closed = True
            await self._watcher.remove(self)

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchEvent:
        if not self._registered:
            raise ClosedError("use 'async with client.watch(...)' before iterating")
        if self._closed and self.queue.empty():
            raise StopAsyncIteration
        item = await self.queue.get()
        if item is _END:
            self.queue.put_nowait(_END)
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self.queue.put_nowait(item)  # keep raising on further reads
            raise item
        return item  # type: ignore[no-any-return]

    async def next_unless(self, stop: asyncio.Future[Any]) -> WatchEvent | None:
        """The next event, or None once ``stop`` is done or the watch ended.

        Nothing is left pending either way (no orphaned ``__anext__`` task).
        """
        nxt = asyncio.ensure_future(self.__anext__())
        try:
            done, _ = await asyncio.wait({nxt, stop}, return_when=asyncio.FIRST_COMPLETED)
            if nxt not in done:
                return None
            try:
                return nxt.result()
            except StopAsyncIteration:
                return None
        finally:
            if not nxt.done():
                nxt.cancel()
                await asyncio.gather(nxt, return_exceptions=True)

    async def wait_created(self, timeout_s: float | None = 5.0) -> None:
        """Wait until etcd acknowledged the watch (events after this are seen)."""
        await asyncio.wait_for(self._created.wait(), timeout_s)

    def _deliver(self, events: list[WatchEvent]) -> None:
        # one revision can hold several events (a txn, a prefix delete), and etcd sends
        # them in one response: compare with the revision needed before this response
        needed = self.next_revision
        for ev in events:
            if ev.revision < needed:
                continue  # already delivered before a reconnect
            self.queue.put_nowait(ev)
            self.next_revision = ev.revision + 1

    def _fail(self, exc: BaseException) -> None:
        self._closed = True
        self.queue.put_nowait(exc)

    def _create_request(self) -> Any:
        return rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(
                key=self.key,
                range_end=self.range_end,
                start_revision=self.next_revision,
                prev_kv=self.prev_kv,
                progress_notify=self.progress_notify,
            )
        )


class Watcher:
    """The client's single Watch stream and the task that drives it."""

    def __init__(self, client: EtcdClient) -> None:
        self._client = client
        self._by_id: dict[int, Watch] = {}
        self._pending: collections.deque[Watch] = collections.deque()
        self._inflight: Watch | None = None
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._serving = False  # a stream is up and creates may be sent on it
        self._stream_ok = False  # the current stream has answered at least once
        self._stream_token: str | None = None  # the auth token the current stream carries
        self._heard_at = 0.0  # loop time of the current stream's last response
        self._closed = False

    async def add(self, watch: Watch) -> None:
        if self._closed:
            raise ClosedError("the client is closed")
        self._pending.append(watch)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="whizorch-etcd-watch")
        elif self._serving:
            self._pump()

    async def remove(self, watch: Watch) -> None:
        if watch in self._pending:
            self._pending.remove(watch)
        if watch.watch_id is not None and self._by_id.get(watch.watch_id) is watch:
            del self._by_id[watch.watch_id]
            self._outbox.put_nowait(rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=watch.watch_id)))
        watch.queue.put_nowait(_END)

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for w in [*self._by_id.values(), *self._pending, *([self._inflight] if self._inflight else [])]:
            w._fail(ClosedError("the etcd client was closed while watching"))
        self._by_id.clear()
        self._pending.clear()
        self._inflight = None

    def _pump(self) -> None:
        """Send the next create if none is in flight (only while a stream is up)."""
        if self._inflight is None and self._pending:
            self._inflight = self._pending.popleft()
            self._outbox.put_nowait(self._inflight._create_request())

    async def _run(self) -> None:
        """Keep the stream open (idle too, so the next watch is one message away);
        after a break, resume every watch on the next endpoint."""
        backoff = 0.05
        while not self._closed and (self._by_id or self._pending or self._inflight):
            endpoint = None
            try:
                endpoint, ch = await self._client.ready_channel()
                await self._serve(endpoint, ch)  # returns only by raising
            except asyncio.CancelledError:
                raise
            except WhizorchError as exc:
                log.warning("watch stream to %s broke: %s; resuming", endpoint, exc)
                if endpoint and _errors.endpoint_failed(exc):
                    self._client._mark_failed(endpoint)
                if _errors.is_token_expired(exc) and not await self._refresh_token():
                    return
            except Exception as exc:  # an unexpected bug must not kill every watch silently
                log.exception("watch stream failed unexpectedly")
                for w in [*self._by_id.values(), *self._pending]:
                    w._fail(EtcdError(f"watch stream failed: {exc!r}"))
                self._by_id.clear()
                self._pending.clear()
                return
            self._requeue_all()
            # a stream that worked earns a quick reconnect; repeated failures back off
            backoff = 0.05 if self._stream_ok else min(backoff * 2, 1.0)
            self._stream_ok = False
            await asyncio.sleep(backoff)

    async def _refresh_token(self) -> bool:
        """Authenticate again after etcd refused the stream's token; False when the
        credentials themselves are refused (every watch then ends with that error)."""
        try:
            await self._client.refresh_token(self._stream_token)
        except AuthError as exc:
            log.error("watch: etcd refused the credentials: %s", exc)
            self._fail_all(exc)
            return False
        except WhizorchError as exc:  # etcd unreachable: the next stream tries again
            log.warning("watch: could not authenticate again: %s", exc)
        return True

    def _fail_all(self, exc: WhizorchError) -> None:
        for w in [*self._by_id.values(), *self._pending, *([self._inflight] if self._inflight else [])]:
            w._fail(exc)
            w._created.set()
        self._by_id.clear()
        self._pending.clear()
        self._inflight = None

    def _requeue_all(self) -> None:
        """After a break: every watch is created again from its next revision."""
        again = list(self._by_id.values())
        if self._inflight is not None:
            again.insert(0, self._inflight)
        self._by_id.clear()
        self._inflight = None
        for w in again:
            w.watch_id = None
        self._pending.extendleft(reversed(again))
        self._outbox = asyncio.Queue()

    async def _serve(self, endpoint: str, ch: grpc.aio.Channel) -> None:
        method = METHODS["Watch"]
        stream = method.bind(ch)
        self._stream_token = self._client._token
        call = stream(metadata=self._client.metadata())
        outbox = self._outbox
        self._serving = True
        self._pump()

        async def send() -> None:
            while True:
                req = await outbox.get()
                await call.write(req)

        loop = asyncio.get_running_loop()
        self._heard_at = loop.time()

        async def watchdog() -> None:
            # a paused member, or one cut off from us alone, keeps the stream open and
            # says nothing: ask for progress after a silence, drop the stream if unanswered
            check, stall = self._client.config.watch_check_s, self._client.config.watch_stall_s
            while True:
                await asyncio.sleep(max(0.01, self._heard_at + check - loop.time()))
                if loop.time() - self._heard_at < check:
                    continue
                asked = loop.time()
                outbox.put_nowait(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))
                await asyncio.sleep(stall)
                if self._heard_at < asked:
                    log.warning("watch stream to %s silent for %.1fs: dropping it", endpoint, loop.time() - asked)
                    call.cancel()
                    return

        sender = loop.create_task(send(), name="whizorch-etcd-watch-send")
        dog = loop.create_task(watchdog(), name="whizorch-etcd-watch-dog")
        try:
            with _errors.mapped(endpoint=endpoint, method=method.path, write=False):
                while True:
                    resp = await call.read()
                    if resp is grpc.aio.EOF:
                        raise _errors.unavailable("watch stream closed by etcd", endpoint=endpoint)
                    self._handle(resp, endpoint)
                    if sender.done():
                        sender.result()
        finally:
            self._serving = False
            sender.cancel()
            dog.cancel()
            call.cancel()
            for t in (sender, dog):
                try:
                    await t
                except (asyncio.CancelledError, grpc.RpcError, Exception):
                    pass

    def _handle(self, resp: Any, endpoint: str) -> None:
        self._stream_ok = True
        self._heard_at = asyncio.get_running_loop().time()
        if resp.created:
            w = self._inflight
            self._inflight = None
            if w is None:
                log.debug("created response with no create in flight (watch %s)", resp.watch_id)
                return
            if resp.canceled and not resp.compact_revision and self._token_may_be_stale(w, resp.cancel_reason):
                # create it again on a new stream, after authenticating again
                w._refused_token = self._stream_token
                self._pending.appendleft(w)
                raise _errors.token_refused(
                    f"etcd refused the watch: {resp.cancel_reason}", key=w.key, endpoint=endpoint
                )
            if resp.canceled or resp.compact_revision:
                w._fail(self._cancel_error(resp, endpoint, w))
                w._created.set()
                self._pump()
                return
            w.watch_id = resp.watch_id
            w._refused_token = None
            if w._closed:
                self._outbox.put_nowait(
                    rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=resp.watch_id))
                )
            else:
                self._by_id[resp.watch_id] = w
                if w.next_revision == 0:
                    w.next_revision = resp.header.revision + 1
                w._created.set()
            self._pump()
            if not resp.events:
                return
        w2 = self._by_id.get(resp.watch_id)
        if w2 is None:
            return  # a cancelled watch's late events
        if resp.canceled:
            if "no leader" in resp.cancel_reason:
                # the member lost its leader: resume this watch (and all) elsewhere
                raise _errors.unavailable(f"watch cancelled: {resp.cancel_reason}", endpoint=endpoint)
            del self._by_id[resp.watch_id]
            w2._fail(self._cancel_error(resp, endpoint, w2))
            return
        if resp.events:
            w2._deliver([watch_event(e) for e in resp.events])
        elif resp.header.revision >= w2.next_revision and not resp.fragment:
            # progress notification: everything up to header.revision has been sent
            w2.next_revision = resp.header.revision + 1

    def _token_may_be_stale(self, w: Watch, reason: str) -> bool:
        """Whether a refused create deserves a new token and one more try.

        etcd checks a watch's permission when it is created, with the token the stream
        was opened with. An expired token is refused as "invalid auth token" (etcd
        3.4.23, and 3.5 releases with the same fix): tried again while each refusal
        comes with a new token. etcd 3.5.1 says "permission denied", as it does to a
        user without the permission: tried once more with a token made after the
        refusal, then reported.
        """
        if self._client.config.auth is None:
            return False
        low = reason.lower()
        if "invalid auth token" in low or "auth store is old" in low:
            return w._refused_token != self._stream_token
        return "permission denied" in low and w._refused_token is None

    @staticmethod
    def _cancel_error(resp: Any, endpoint: str, w: Watch) -> EtcdError:
        if resp.compact_revision:
            return CompactedError(
                "watch history was compacted: re-read the keys, then watch from the read's revision + 1",
                compact_revision=resp.compact_revision,
                requested_revision=w.next_revision,
                key=w.key,
                endpoint=endpoint,
            )
        reason = resp.cancel_reason or "no reason given"
        low = reason.lower()
        if "permission denied" in low or "auth token" in low or "user name is empty" in low:
            return AuthError(f"etcd refused the watch: {reason}", key=w.key, endpoint=endpoint)
        return EtcdError(f"etcd cancelled the watch: {reason}", key=w.key, endpoint=endpoint)
