"""EtcdClient: the thin asyncio adapter over grpc.aio.

One client holds one gRPC channel per endpoint it has used and talks to one endpoint at
a time, moving to the next when the current one fails (connection refused, no leader,
timeouts). Every call has a deadline. Reads, lease calls and txns the caller marks
idempotent are retried with tenacity within ``retry_deadline_s``; a write that may have
reached etcd is never resent: it raises :class:`OutcomeUnknownError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Protocol

import attrs
import grpc
import grpc.aio
import tenacity

from whizorch._check import is_int
from whizorch.errors import (
    ClosedError,
    CompactedError,
    ConfigError,
    EtcdError,
    LeaseNotFoundError,
    RequestTooLargeError,
    WhizorchError,
)
from whizorch.etcd import _errors
from whizorch.etcd._config import EtcdConfig
from whizorch.etcd._methods import METHODS, Method
from whizorch.etcd._proto import rpc_pb2
from whizorch.etcd._types import (
    Compare,
    DeleteResult,
    KeyLike,
    KeyValue,
    Op,
    PutResult,
    RangeResult,
    SortOrder,
    SortTarget,
    TxnResult,
    delete_request,
    delete_result,
    prefix_end,
    put_request,
    put_result,
    range_request,
    range_result,
    to_bytes,
    txn_request,
    txn_result,
)
from whizorch.etcd._watch import Watch, Watcher

__all__ = ["CallObserver", "CallTiming", "EtcdClient", "LeaseInfo", "Member", "Page", "Status"]

log = logging.getLogger("whizorch.etcd")


@attrs.frozen
class CallTiming:
    """One etcd call as an observer sees it."""

    operation: str
    """The etcd method (``Range``, ``Put``, ``Txn``, ``LeaseKeepAlive``, ``Status`` ...)."""
    seconds: float
    """How long the call took, its retries included."""
    ok: bool
    """False when it raised."""


class CallObserver(Protocol):
    """Told of every etcd call a client makes (``EtcdClient.observers``); it must be
    fast and not raise (an error it raises is logged, never the call's)."""

    def __call__(self, call: CallTiming, /) -> None: ...


@attrs.frozen
class LeaseInfo:
    """A lease: its id and TTL in seconds (remaining TTL for ``lease_time_to_live``)."""

    id: int
    ttl: int
    granted_ttl: int = 0
    keys: tuple[bytes, ...] = ()


@attrs.frozen
class Member:
    """One member of the etcd cluster."""

    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool


@attrs.frozen
class Page:
    """One page of :meth:`EtcdClient.get_pages`: keys in key order, read at ``revision``
    (the same for every page of one read); ``more`` when keys follow in the range."""

    kvs: list[KeyValue]
    revision: int
    more: bool


@attrs.frozen
class Status:
    """A member's maintenance status."""

    endpoint: str
    version: str
    db_size: int
    leader: int
    member_id: int
    raft_index: int
    raft_term: int
    revision: int
    errors: tuple[str, ...]
    db_size_in_use: int = 0
    """Bytes of the backend file holding live data (etcd 3.4+); ``db_size`` less this
    is free space a defragmentation would return to the filesystem."""


def _retryable(exc: BaseException) -> bool:
    """Resend only what certainly never took effect, or what is safe to repeat."""
    return isinstance(exc, WhizorchError) and (_errors.is_token_expired(exc) or _errors.is_safe_to_retry(exc))


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # etcd's keepalive policy refuses pings without an open stream (GOAWAY too_many_pings)
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
]


# how long the endpoint in use may take to connect before the others are raced
_HEAD_START_S = 0.25


class EtcdClient:
    """An asyncio etcd v3 client for etcd 3.4 and 3.5.

    ``EtcdClient("127.0.0.1:2379,127.0.0.1:22379")`` or ``EtcdClient(EtcdConfig(...))``;
    keyword arguments set the :class:`EtcdConfig` fields. Use it as ``async with``.
    """

    def __init__(self, config: EtcdConfig | str | Sequence[str], /, **options: Any) -> None:
        if isinstance(config, EtcdConfig):
            self.config = attrs.evolve(config, **options) if options else config
        else:
            self.config = EtcdConfig(endpoints=config, **options)
        self._state = _State.UNOPENED
        self._endpoints = list(self.config.endpoints)
        self._current = 0
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()
        self._ka_lock = asyncio.Lock()
        self._ka_call: grpc.aio.StreamStreamCall | None = None
        self._ka_endpoint: str | None = None
        self._watcher: Watcher | None = None
        self._credentials: grpc.ChannelCredentials | None = None
        self.observers: list[CallObserver] = []
        """Told of every unary call and keepalive with a :class:`CallTiming`.
        whizorch's Prometheus metrics attach here; an observer must be fast and not raise."""

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> EtcdClient:
        """Prepare credentials and authenticate (when auth is configured)."""
        if self._state is _State.OPEN:
            return self
        if self._state is _State.CLOSED:
            raise ClosedError("an EtcdClient cannot be reopened after close; make a new one")
        if self.config.tls is not None:
            ca, key, cert = self.config.tls.credentials_bytes()
            self._credentials = grpc.ssl_channel_credentials(ca, key, cert)
        self._state = _State.OPEN
        try:
            if self.config.auth is not None:
                await self._authenticate()
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Close watches, the keepalive stream and every channel. Closing twice is fine."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        if self._watcher is not None:
            await self._watcher.aclose()
        await self._reset_keepalive()
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            await ch.close(grace=None)

    async def __aenter__(self) -> EtcdClient:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def is_open(self) -> bool:
        """True between open() and close()."""
        return self._state is _State.OPEN

    def _check_open(self) -> None:
        if self._state is not _State.OPEN:
            raise ClosedError(f"EtcdClient is {self._state.value}; use 'async with EtcdClient(...)'")

    # -- endpoints and channels ------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The endpoint calls currently go to."""
        return self._endpoints[self._current]

    def _channel_for(self, endpoint: str) -> grpc.aio.Channel:
        ch = self._channels.get(endpoint)
        if ch is None:
            opts = [*_CHANNEL_OPTIONS, ("grpc.keepalive_time_ms", int(self.config.keepalive_time_s * 1000))]
            tls = self.config.tls
            if self._credentials is not None:
                if tls is not None and tls.server_name:
                    opts.append(("grpc.ssl_target_name_override", tls.server_name))
                ch = grpc.aio.secure_channel(endpoint, self._credentials, options=opts)
            else:
                ch = grpc.aio.insecure_channel(endpoint, options=opts)
            self._channels[endpoint] = ch
        return ch

    def _mark_failed(self, endpoint: str) -> None:
        """Move to the next endpoint if ``endpoint`` is still the current one."""
        if len(self._endpoints) > 1 and self._endpoints[self._current] == endpoint:
            self._current = (self._current + 1) % len(self._endpoints)
            log.info("etcd endpoint %s failed; switching to %s", endpoint, self.endpoint)

    async def ready_channel(self, deadline: float | None = None) -> tuple[str, grpc.aio.Channel]:
        """A connected channel: the current endpoint's if it is connected, else any
        other endpoint's that is, else the first to connect (all are tried at once, so
        a dead member never costs a connect timeout while a live one answers)."""
        self._check_open()
        endpoint = self.endpoint
        ch = self._channel_for(endpoint)
        state = ch.get_state(try_to_connect=True)
        if state is grpc.ChannelConnectivity.READY:
            return endpoint, ch
        order = self._endpoints[self._current :] + self._endpoints[: self._current]
        for other in order[1:]:
            och = self._channel_for(other)
            if och.get_state(try_to_connect=True) is grpc.ChannelConnectivity.READY:
                self._use(other)
                return other, och
        wait = self.config.connect_timeout_s
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - time.monotonic()))
        if state is not grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            # the endpoint in use (a region's own member first) gets a head start: a
            # live member connects in milliseconds, and the order of the list is kept
            head = min(wait, _HEAD_START_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ch.channel_ready(), head)
                return endpoint, ch
            wait -= head
        waiting = {asyncio.ensure_future(self._channel_for(e).channel_ready()): e for e in order}
        try:
            done, _ = await asyncio.wait(waiting, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in waiting:
                fut.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
        ready = [waiting[f] for f in done if not f.cancelled() and f.exception() is None]
        if ready:
            # prefer the current endpoint, then the order of the list
            chosen = min(ready, key=order.index)
            self._use(chosen)
            return chosen, self._channel_for(chosen)
        self._mark_failed(endpoint)
        raise _errors.unavailable(
            "no etcd endpoint could be connected", endpoints=tuple(self._endpoints), state=str(ch.get_state())
        )

    def _use(self, endpoint: str) -> None:
        index = self._endpoints.index(endpoint)
        if index != self._current:
            log.info("etcd endpoint %s is not connected; using %s", self.endpoint, endpoint)
            self._current = index

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata: the auth token, and ``hasleader`` so a member cut off from the
        quorum refuses at once (unary calls) or cancels the stream (watches)."""
        md: list[tuple[str, str]] = [("hasleader", "true")]
        if self._token:
            md.append(("token", self._token))
        return tuple(md)

    async def _authenticate(self) -> None:
        auth = self.config.auth
        assert auth is not None
        method = METHODS["Authenticate"]
        req = rpc_pb2.AuthenticateRequest(name=auth.username, password=auth.password)
        self._token = None
        resp = await self._call(method, req, write=False, authenticate=False)
        self._token = resp.token
        log.debug("authenticated to etcd as %s", auth.username)

    async def refresh_token(self, stale: str | None) -> None:
        """Authenticate again unless another task already replaced ``stale``."""
        async with self._auth_lock:
            if self._token == stale and self.config.auth is not None:
                await self._authenticate()

    # -- the call path ---------------------------------------------------------------

    async def _call(
        self,
        method: Method,
        request: Any,
        *,
        write: bool,
        timeout_s: float | None = None,
        authenticate: bool = True,
    ) -> Any:
        """One unary call with deadline, endpoint failover and (where safe) retries.

        ``write=False`` for reads and for writes that are idempotent: those are resent
        after any transport failure. A ``write=True`` call is resent only when it
        certainly never took effect.
        """
        self._check_open()
        size = request.ByteSize()
        if size > self.config.max_request_bytes:
            raise RequestTooLargeError(
                f"request of {size} bytes is over etcd's limit of {self.config.max_request_bytes} bytes",
                method=method.path,
                size=size,
            )
        timeout = timeout_s if timeout_s is not None else self.config.timeout_s
        if timeout <= 0:
            raise ConfigError("timeout_s must be positive", field="timeout_s", value=timeout)

        with self._observed(method.name):
            return await self._call_retrying(method, request, write=write, timeout_s=timeout, authenticate=authenticate)

    @contextlib.contextmanager
    def _observed(self, operation: str) -> Iterator[None]:
        """Time a call (retries included) for the observers: the one place calls are timed."""
        if not self.observers:
            yield
            return
        started = time.perf_counter()
        ok = False
        try:
            yield
            ok = True
        finally:
            call = CallTiming(operation, time.perf_counter() - started, ok)
            for observer in list(self.observers):
                try:
                    observer(call)
                except Exception:  # an observer's bug must not fail the call it observed
                    log.exception("etcd call observer failed")

    async def _failed(self, err: WhizorchError, endpoint: str, token: str | None, *, refresh: bool = True) -> None:
        """After a call to ``endpoint`` failed: move on from an endpoint that looks
        unhealthy; authenticate again (``refresh``) when etcd refused the token the
        call carried."""
        if _errors.endpoint_failed(err):
            self._mark_failed(endpoint)
        if refresh and _errors.is_token_expired(err) and self.config.auth is not None:
            await self.refresh_token(token)

    async def _call_retrying(
        self, method: Method, request: Any, *, write: bool, timeout_s: float, authenticate: bool
    ) -> Any:
        # the fast path: one attempt, no retry machinery
        try:
            return await self._attempt(method, request, write=write, timeout_s=timeout_s, authenticate=authenticate)
        except WhizorchError as exc:
            if not _retryable(exc):
                raise
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(_retryable),
            stop=tenacity.stop_after_delay(self.config.retry_deadline_s),
            wait=tenacity.wait_random_exponential(multiplier=0.02, max=0.5),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt(method, request, write=write, timeout_s=timeout_s, authenticate=authenticate)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, method: Method, request: Any, *, write: bool, timeout_s: float, authenticate: bool) -> Any:
        deadline = time.monotonic() + timeout_s
        endpoint, ch = await self.ready_channel(deadline)
        token = self._token
        remaining = max(0.001, deadline - time.monotonic())
        stub = method.bind(ch)
        try:
            with _errors.mapped(endpoint=endpoint, method=method.path, write=write):
                return await stub(request, timeout=remaining, metadata=self.metadata() if authenticate else ())
        except WhizorchError as err:
            await self._failed(err, endpoint, token, refresh=authenticate)
            raise

    # -- KV ----------------------------------------------------------------------------

    async def get(
        self,
        key: KeyLike,
        *,
        prefix: bool = False,
        range_end: bytes | None = None,
        revision: int = 0,
        limit: int = 0,
        serializable: bool = False,
        keys_only: bool = False,
        count_only: bool = False,
        sort_target: SortTarget = "key",
        sort_order: SortOrder = "none",
        min_create_revision: int = 0,
        max_create_revision: int = 0,
        timeout_s: float | None = None,
    ) -> RangeResult:
        """Read a key, a range or a prefix (linearizable unless ``serializable``)."""
        req = range_request(
            key,
            range_end=range_end,
            prefix=prefix,
            revision=revision,
            limit=limit,
            serializable=serializable,
            keys_only=keys_only,
            count_only=count_only,
            sort_target=sort_target,
            sort_order=sort_order,
            min_create_revision=min_create_revision,
            max_create_revision=max_create_revision,
        )
        resp = await self._call(METHODS["Range"], req, write=False, timeout_s=timeout_s)
        return range_result(resp)

    async def get_pages(
        self,
        key: KeyLike,
        *,
        prefix: bool = False,
        range_end: bytes | None = None,
        page_size: int = 1000,
        revision: int = 0,
        keys_only: bool = False,
        timeout_s: float | None = None,
    ) -> AsyncIterator[Page]:
        """Read a prefix or range in pages of at most ``page_size`` keys, in key order,
        every page at one revision: ``revision``, or (0) the first page's header revision.

        Each page is one Range request starting just after the previous page's last key,
        so no response holds more than ``page_size`` keys and writes made meanwhile are
        never seen: the pages together are the range as it was at ``Page.revision``. If
        that revision is compacted before the last page, iteration raises
        :class:`~whizorch.errors.CompactedError`: read again from the start. A single
        key (neither ``prefix`` nor ``range_end``) is one page.
        """
        if not is_int(page_size, minimum=1):
            raise ConfigError("page_size must be a positive int", field="page_size", value=page_size)
        start = to_bytes(key, "key")
        if prefix:
            end = prefix_end(start) if start else b"\0"
        else:
            end = range_end or b""
        at = revision
        while True:
            res = await self.get(
                start or b"\0", range_end=end or None, revision=at, limit=page_size, keys_only=keys_only, timeout_s=timeout_s
            )
            if at == 0:
                at = res.header.revision
            more = res.more and bool(res.kvs)  # etcd reads one key past the limit to set ``more``
            yield Page(res.kvs, at, more)
            if not more:
                return
            start = res.kvs[-1].key + b"\0"  # the smallest key after the last one read

    async def put(
        self,
        key: KeyLike,
        value: KeyLike,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        idempotent: bool = False,
        timeout_s: float | None = None,
    ) -> PutResult:
        """Write a key.

        Not resent once it may have reached etcd: a lost answer raises
        OutcomeUnknownError, unless ``idempotent=True`` says writing twice is harmless.
        """
        req = put_request(key, value, lease=lease, prev_kv=prev_kv)
        return put_result(await self._call(METHODS["Put"], req, write=not idempotent, timeout_s=timeout_s))

    async def delete(
        self, key: KeyLike, *, prefix: bool = False, prev_kv: bool = False, timeout_s: float | None = None
    ) -> DeleteResult:
        """Delete a key or a prefix (idempotent, so retried; ``deleted`` then counts the
        last attempt only)."""
        req = delete_request(key, prefix=prefix, prev_kv=prev_kv)
        # deleting twice deletes nothing more: safe to resend
        resp = await self._call(METHODS["DeleteRange"], req, write=False, timeout_s=timeout_s)
        return delete_result(resp)

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op] = (),
        failure: Sequence[Op] = (),
        *,
        idempotent: bool = False,
        timeout_s: float | None = None,
    ) -> TxnResult:
        """Run a transaction: ``success`` ops if every compare holds, else ``failure``.

        A txn that only reads is retried. Pass ``idempotent=True`` when resending a txn
        whose first send may have committed is harmless (its compares make a second
        run a no-op whose result tells the same story); otherwise a lost answer raises
        :class:`OutcomeUnknownError`.
        """
        req = txn_request(compare, success, failure)
        reads_only = all(o.is_read for o in (*success, *failure))
        resp = await self._call(
            METHODS["Txn"], req, write=not (reads_only or idempotent), timeout_s=timeout_s
        )
        return txn_result(resp)

    async def compact(self, revision: int, *, physical: bool = False, timeout_s: float | None = None) -> None:
        """Compact the history up to ``revision`` (idempotent: a revision already
        compacted, by this call's own lost first attempt or by anyone, is not an error)."""
        req = rpc_pb2.CompactionRequest(revision=revision, physical=physical)
        try:
            await self._call(METHODS["Compact"], req, write=False, timeout_s=timeout_s)
        except CompactedError:
            pass  # the history up to ``revision`` is gone either way

    # -- leases ------------------------------------------------------------------------

    async def lease_grant(self, ttl_s: int, *, lease_id: int = 0, timeout_s: float | None = None) -> LeaseInfo:
        """Grant a lease of ``ttl_s`` seconds (etcd may raise it to its minimum).

        Retried: a grant whose answer was lost leaves an unused lease that expires.
        """
        if not is_int(ttl_s, minimum=1):
            raise ConfigError("a lease TTL must be a positive whole number of seconds", field="ttl_s", value=ttl_s)
        req = rpc_pb2.LeaseGrantRequest(TTL=ttl_s, ID=lease_id)
        resp = await self._call(METHODS["LeaseGrant"], req, write=False, timeout_s=timeout_s)
        if resp.error:
            raise EtcdError(f"etcd refused the lease: {resp.error}", ttl_s=ttl_s)
        return LeaseInfo(resp.ID, resp.TTL, resp.TTL)

    async def lease_revoke(self, lease_id: int, *, timeout_s: float | None = None) -> None:
        """Revoke a lease, deleting its keys. A lease already gone is not an error."""
        req = rpc_pb2.LeaseRevokeRequest(ID=lease_id)
        try:
            await self._call(METHODS["LeaseRevoke"], req, write=False, timeout_s=timeout_s)
        except LeaseNotFoundError:
            pass

    async def lease_time_to_live(
        self, lease_id: int, *, keys: bool = False, timeout_s: float | None = None
    ) -> LeaseInfo | None:
        """The lease's remaining TTL (None when it no longer exists)."""
        req = rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=keys)
        resp = await self._call(METHODS["LeaseTimeToLive"], req, write=False, timeout_s=timeout_s)
        if resp.TTL == -1:
            return None
        return LeaseInfo(resp.ID, resp.TTL, resp.grantedTTL, tuple(resp.keys))

    async def lease_list(self, *, timeout_s: float | None = None) -> list[int]:
        """IDs of every lease the cluster holds."""
        resp = await self._call(METHODS["LeaseLeases"], rpc_pb2.LeaseLeasesRequest(), write=False, timeout_s=timeout_s)
        return [lease.ID for lease in resp.leases]

    async def lease_keepalive_once(self, lease_id: int, *, timeout_s: float | None = None) -> int:
        """Refresh a lease once over the client's shared keepalive stream.

        Returns the new TTL; raises :class:`LeaseNotFoundError` if the lease is gone.
        Keepalives of all sessions share one stream; they are sent one at a time, so
        each response matches its request.
        """
        self._check_open()
        timeout = timeout_s if timeout_s is not None else self.config.timeout_s
        deadline = time.monotonic() + timeout
        with self._observed("LeaseKeepAlive"):
            return await self._keepalive_once(lease_id, deadline, timeout_for_message=timeout)

    async def _keepalive_once(self, lease_id: int, deadline: float, *, timeout_for_message: float) -> int:
        method = METHODS["LeaseKeepAlive"]
        async with self._ka_lock:
            endpoint = self._ka_endpoint
            try:
                if self._ka_call is None:
                    endpoint, ch = await self.ready_channel(deadline)
                    self._ka_call = method.bind(ch)(metadata=self.metadata())
                    self._ka_endpoint = endpoint
                call = self._ka_call
                remaining = max(0.001, deadline - time.monotonic())
                with _errors.mapped(endpoint=endpoint, method=method.path, write=False):
                    async with asyncio.timeout(remaining):
                        await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
                        resp = await call.read()
            except TimeoutError as exc:
                await self._reset_keepalive()
                if endpoint:
                    self._mark_failed(endpoint)
                raise _errors.unavailable(
                    f"lease keepalive got no answer within {timeout_for_message:.3g}s", endpoint=endpoint, lease=lease_id
                ) from exc
            except WhizorchError as err:
                await self._reset_keepalive()
                if endpoint:
                    await self._failed(err, endpoint, self._token)
                raise
            except BaseException:
                await self._reset_keepalive()  # a cancelled exchange leaves the stream out of step
                raise
            if resp is grpc.aio.EOF:
                await self._reset_keepalive()
                raise _errors.unavailable("keepalive stream closed by etcd", endpoint=endpoint)
        if resp.TTL <= 0:
            raise LeaseNotFoundError("the lease has expired or was revoked", lease=lease_id)
        return int(resp.TTL)

    async def _reset_keepalive(self) -> None:
        call, self._ka_call, self._ka_endpoint = self._ka_call, None, None
        if call is not None:
            call.cancel()

    # -- cluster and maintenance -----------------------------------------------------

    async def member_list(self, *, timeout_s: float | None = None) -> list[Member]:
        """The cluster's members."""
        resp = await self._call(
            METHODS["MemberList"], rpc_pb2.MemberListRequest(), write=False, timeout_s=timeout_s
        )
        return [
            Member(m.ID, m.name, tuple(m.peerURLs), tuple(m.clientURLs), bool(getattr(m, "isLearner", False)))
            for m in resp.members
        ]

    async def status(self, endpoint: str | None = None, *, timeout_s: float | None = None) -> Status:
        """Maintenance status of ``endpoint`` (default: the current endpoint)."""
        self._check_open()
        method = METHODS["Status"]
        timeout = timeout_s if timeout_s is not None else self.config.timeout_s
        if endpoint is None:
            resp = await self._call(method, rpc_pb2.StatusRequest(), write=False, timeout_s=timeout)
            endpoint = self.endpoint
        else:
            resp = await self._unary_at(endpoint, method, rpc_pb2.StatusRequest(), timeout)
        return Status(
            endpoint,
            resp.version,
            resp.dbSize,
            resp.leader,
            resp.header.member_id,
            resp.raftIndex,
            resp.raftTerm,
            resp.header.revision,
            tuple(getattr(resp, "errors", ())),
            int(getattr(resp, "dbSizeInUse", 0)),
        )

    # -- Raft leadership -------------------------------------------------------------

    async def leader_status(self, *, timeout_s: float | None = None) -> Status:
        """The status of etcd's Raft leader, asked of the leader itself: ``member_id`` is
        the leader, ``raft_index`` its committed index, ``endpoint`` an endpoint that
        reaches it (one of the client's, else the leader's advertised client URL).

        Every endpoint is asked at once (``status``), so this costs one round trip to the
        farthest answering member. Raises :class:`EtcdUnavailableError` when no member
        answers, none knows a leader, or the leader cannot be reached.
        """
        self._check_open()
        deadline = time.monotonic() + self._timeout(timeout_s)
        answers = await self._statuses(self._endpoints, deadline)
        known = [s for s in answers if isinstance(s, Status)]
        if not known:
            failed = [e for e in answers if isinstance(e, WhizorchError)]
            raise _errors.unavailable(
                f"no etcd endpoint answered a status request ({failed[0].message})",
                endpoints=tuple(self._endpoints),
            ) from failed[0]
        # the newest term's view of who leads (a member cut off may still name an old leader)
        newest = max((s for s in known if s.leader), key=lambda s: s.raft_term, default=None)
        if newest is None:
            raise _errors.unavailable("etcd has no Raft leader now", endpoints=tuple(self._endpoints))
        for status in known:
            if status.member_id == newest.leader:
                return status
        # none of our endpoints is the leader's: try the URLs it advertises
        from whizorch.etcd._config import parse_endpoints

        members = {m.id: m for m in await self.member_list(timeout_s=self._left(deadline))}
        leader = members.get(newest.leader)
        urls = list(parse_endpoints(leader.client_urls)) if leader and leader.client_urls else []
        for answer in await self._statuses([u for u in urls if u not in self._endpoints], deadline):
            if isinstance(answer, Status) and answer.member_id == newest.leader:
                return answer
        raise _errors.unavailable(
            f"etcd's Raft leader {newest.leader:x} cannot be reached", leader=newest.leader, urls=tuple(urls)
        )

    async def move_leader(self, target_member_id: int, *, timeout_s: float | None = None) -> None:
        """Hand etcd's Raft leadership to the member ``target_member_id`` (Maintenance
        MoveLeader, what ``etcdctl move-leader`` sends) and return once it leads.

        The request must reach the current leader: it is found with
        :meth:`leader_status`, and found again once if leadership moved in between
        ("not leader"). A target that already leads returns at once. A target that is not
        a voting member of the cluster raises :class:`ConfigError`; a transfer that does
        not finish within ``timeout_s`` (default ``timeout_s`` of the config; etcd needs
        about one round trip between the two members plus one to a quorum) raises
        :class:`EtcdUnavailableError`, and may still complete afterwards: moving
        leadership twice is harmless, so it is never :class:`OutcomeUnknownError`.
        Writes proposed while the transfer runs may be refused; do it rarely.
        """
        self._check_open()
        if not is_int(target_member_id, minimum=1):
            raise ConfigError("a member id is a positive integer", field="target_member_id", value=target_member_id)
        deadline = time.monotonic() + self._timeout(timeout_s)
        members = await self.member_list(timeout_s=self._left(deadline))
        target = next((m for m in members if m.id == target_member_id), None)
        if target is None or target.is_learner:
            what = "is not a member" if target is None else "is a learner (only voting members can lead)"
            listed = ", ".join(f"{m.id:x} ({m.name or 'unstarted'})" for m in members)
            raise ConfigError(
                f"cannot move etcd's leadership to {target_member_id:x}: it {what} of the cluster "
                f"(members: {listed})",
                field="target_member_id",
                value=target_member_id,
            )
        method = METHODS["MoveLeader"]
        request = rpc_pb2.MoveLeaderRequest(targetID=target_member_id)
        for attempt in (1, 2):
            leader = await self.leader_status(timeout_s=self._left(deadline))
            if leader.member_id == target_member_id:
                return
            token = self._token
            try:
                await self._unary_at(leader.endpoint, method, request, self._left(deadline))
            except WhizorchError as err:
                if attempt == 1 and _errors.is_not_leader(err):
                    log.info("etcd leadership moved while asking %s to hand it over; asking again", leader.endpoint)
                    continue
                if attempt == 1 and _errors.is_token_expired(err) and self.config.auth is not None:
                    await self.refresh_token(token)
                    continue
                raise
            log.info("etcd leadership moved from %x to %x (%s)", leader.member_id, target_member_id, target.name)
            return

    async def _unary_at(self, endpoint: str, method: Method, request: Any, timeout_s: float) -> Any:
        """One call to exactly ``endpoint``: no failover, no retry, no ``hasleader`` (a
        member without a leader still answers); timed, errors translated."""
        stub = method.bind(self._channel_for(endpoint))
        with self._observed(method.name), _errors.mapped(endpoint=endpoint, method=method.path, write=False):
            return await stub(request, timeout=timeout_s, metadata=self.metadata()[1:])

    async def _statuses(self, endpoints: Sequence[str], deadline: float) -> list[Status | WhizorchError]:
        """``status`` of each endpoint at once; a failure is returned in its place."""

        async def one(endpoint: str) -> Status | WhizorchError:
            try:
                return await self.status(endpoint, timeout_s=self._left(deadline))
            except WhizorchError as exc:
                return exc

        return list(await asyncio.gather(*(one(e) for e in endpoints)))

    def _timeout(self, timeout_s: float | None) -> float:
        timeout = timeout_s if timeout_s is not None else self.config.timeout_s
        if timeout <= 0:
            raise ConfigError("timeout_s must be positive", field="timeout_s", value=timeout)
        return timeout

    @staticmethod
    def _left(deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _errors.unavailable("the call's deadline passed")
        return left

    # -- watches -----------------------------------------------------------------------

    def watch(
        self,
        key: KeyLike,
        *,
        prefix: bool = False,
        range_end: bytes | None = None,
        start_revision: int = 0,
        prev_kv: bool = False,
        progress_notify: bool = False,
    ) -> Watch:
        """Watch a key or prefix: ``async with client.watch(k) as w: async for ev in w``.

        ``start_revision=0`` means "from now". Events arrive in revision order, each
        once, across reconnects (the watch resumes from the last delivered revision
        + 1). If history the watch needs was compacted, iteration raises
        :class:`~whizorch.errors.CompactedError`: re-read, then watch again. A watch
        the user may not read raises :class:`~whizorch.errors.AuthError`; an expired
        auth token is renewed and the watch created again.
        """
        self._check_open()
        if self._watcher is None:
            self._watcher = Watcher(self)
        return Watch(
            self._watcher,
            key,
            prefix=prefix,
            range_end=range_end,
            start_revision=start_revision,
            prev_kv=prev_kv,
            progress_notify=progress_notify,
        )
