"""Session: one etcd lease kept alive by an owned task, and the promise it backs.

The lease is refreshed every TTL/3. Each successful keepalive *sent* at local time
``t`` with answer ``ttl`` proves the lease lives at the server until at least
``t + ttl`` (the server started counting after ``t``). The session therefore declares
itself **lost** at ``t + ttl - step_down_margin_s`` if no newer keepalive has
succeeded: strictly before the lease can have expired at the server. Everything the
lease guards (leadership, locks, claims) must stop then.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable

import attrs

from whizorch._check import is_int, is_number
from whizorch.errors import (
    ClosedError,
    ConfigError,
    LeaseNotFoundError,
    SessionLostError,
    WhizorchError,
)
from whizorch.etcd import EtcdClient, LeaseInfo

__all__ = ["LeaseTiming", "Session"]

log = logging.getLogger("whizorch.coord.session")

# how long a cancelled open() waits for its lease grant's answer, to revoke the lease
# (a healthy etcd answers in milliseconds; this bounds the delay when it does not)
_ORPHAN_GRACE_S = 0.5


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


def _refuse(field: str, value: object, reason: str) -> ConfigError:
    return ConfigError(f"{field} {reason}", field=field, value=value, reason=reason)


@attrs.frozen
class LeaseTiming:
    """A session's lease timing, checked once when built (here, and only here), then
    passed whole: from the configuration (``ConsensusConfig.lease``) or
    :meth:`LeaseTiming.of` to a role, to every ``Session(client, timing=...)`` it opens,
    and its ``ttl_s`` to the lease grant. A bad value is a ConfigError whose ``field``
    and ``reason`` say which and why."""

    ttl_s: int
    """The lease's TTL at etcd (whole seconds >= 1)."""
    step_down_margin_s: float
    """The session counts itself lost this long before etcd could expire the lease
    (in [0, TTL))."""
    keepalive_interval_s: float
    """How often the lease is kept alive (positive, shorter than TTL - margin)."""

    def __attrs_post_init__(self) -> None:
        ttl, margin, interval = self.ttl_s, self.step_down_margin_s, self.keepalive_interval_s
        if not is_int(ttl, minimum=1):
            raise _refuse("ttl_s", ttl, "must be a whole number of seconds >= 1")
        if not is_number(margin) or not 0 <= margin < ttl:
            raise _refuse("step_down_margin_s", margin, f"must be in [0, TTL) = [0, {ttl})")
        if not is_number(interval) or not 0 < interval < ttl - margin:
            raise _refuse(
                "keepalive_interval_s", interval,
                f"must be positive and shorter than TTL - step_down_margin_s = {ttl - margin:g}",
            )

    @classmethod
    def of(
        cls, ttl_s: int, *, step_down_margin_s: float | None = None, keepalive_interval_s: float | None = None
    ) -> LeaseTiming:
        """The timing for ``ttl_s`` with the defaults filled in: a margin of TTL/5, a
        keepalive every TTL/3. A margin that leaves no room for the default keepalive
        is refused as the margin's fault."""
        ttl_ok = is_int(ttl_s, minimum=1)
        margin = step_down_margin_s if step_down_margin_s is not None else (ttl_s / 5 if ttl_ok else 0.0)
        interval = keepalive_interval_s if keepalive_interval_s is not None else (ttl_s / 3 if ttl_ok else 0.0)
        try:
            return cls(ttl_s, margin, interval)
        except ConfigError as exc:
            if keepalive_interval_s is None and exc.field == "keepalive_interval_s" and ttl_ok:
                raise _refuse(
                    "step_down_margin_s", margin,
                    f"leaves TTL - step_down_margin_s = {ttl_s - margin:g}, not more than the default "
                    f"keepalive_interval_s (TTL / 3 = {ttl_s / 3:g}); lower it or set the interval",
                ) from None
            raise



class Session:
    """A lease kept alive in the background; ``async with Session(client, ttl_s=10)``.

    ``lost`` is set as soon as the lease may be gone (keepalive failed past the
    deadline, the lease was revoked, or the session closed); ``check()`` raises
    :class:`SessionLostError` from then on.
    """

    def __init__(
        self,
        client: EtcdClient,
        /,
        *,
        ttl_s: int = 10,
        step_down_margin_s: float | None = None,
        keepalive_interval_s: float | None = None,
        timing: LeaseTiming | None = None,
    ) -> None:
        if not isinstance(client, EtcdClient):
            raise ConfigError("Session needs an EtcdClient", field="client", value=type(client).__name__)
        if timing is None:
            timing = LeaseTiming.of(ttl_s, step_down_margin_s=step_down_margin_s, keepalive_interval_s=keepalive_interval_s)
        elif not isinstance(timing, LeaseTiming):
            raise ConfigError("timing must be a LeaseTiming (see LeaseTiming.of)", field="timing", value=timing)
        self.client = client
        self.timing = timing
        self.ttl_s: int = timing.ttl_s
        self.step_down_margin_s: float = timing.step_down_margin_s
        self.keepalive_interval_s: float = timing.keepalive_interval_s
        self.lease_id = 0
        self.lost = asyncio.Event()
        self.lost_reason: str | None = None
        self._safe_until = 0.0
        self._state = _State.UNOPENED
        self._task: asyncio.Task[None] | None = None
        self._callbacks: list[Callable[[Session], None]] = []
        self._failure: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> Session:
        """Grant the lease and start keeping it alive.

        If cancelled while the grant is in flight, waits up to 0.5 s for its answer to
        revoke the lease it made; a grant that lands later leaves a lease with no keys
        that expires within its TTL.
        """
        if self._state is _State.OPEN:
            return self
        if self._state is _State.CLOSED:
            raise ClosedError("a Session cannot be reopened; make a new one")
        loop = asyncio.get_running_loop()
        sent = loop.time()
        # a grant answered after the lease could be kept alive is worthless: bound it (a
        # follower that has not noticed its leader died holds a write until its timeout)
        budget = max(0.1, self.ttl_s - self.step_down_margin_s - self.keepalive_interval_s)
        grant = asyncio.ensure_future(
            self.client.lease_grant(self.ttl_s, timeout_s=min(self.client.config.timeout_s, budget))
        )
        try:
            lease = await asyncio.shield(grant)
        except asyncio.CancelledError:
            await self._revoke_orphan(grant)
            raise
        self.lease_id = lease.id
        self._safe_until = sent + lease.ttl - self.step_down_margin_s
        self._state = _State.OPEN
        self._task = loop.create_task(self._keepalive(), name=f"whizorch-session-{lease.id:x}")
        log.debug("session %x opened (ttl %ss)", lease.id, lease.ttl)
        return self

    async def _revoke_orphan(self, grant: asyncio.Future[LeaseInfo]) -> None:
        """After open() was cancelled: the grant may land anyway. Revoke its lease if it
        answers within a short grace; later, the lease (it has no keys) expires within
        its TTL."""
        try:
            done, _ = await asyncio.wait({grant}, timeout=_ORPHAN_GRACE_S)
            if not done or grant.cancelled() or grant.exception() is not None:
                return
            await self.client.lease_revoke(grant.result().id)
        except WhizorchError as exc:
            log.warning("could not revoke the lease of a cancelled open: %s", exc)
        finally:
            grant.cancel()

    async def close(self, *, revoke: bool = True) -> None:
        """Stop the keepalive and revoke the lease (its keys go with it).

        ``revoke=False`` leaves the lease to expire by itself (or to a later
        ``client.lease_revoke(session.lease_id)``): a role whose session was lost
        re-registers at once instead of waiting on a revoke that etcd may not answer
        while it has no leader. Closing twice is fine. Runs to the end even if the
        caller is being cancelled.
        """
        if self._state is not _State.OPEN:
            self._state = _State.CLOSED
            return
        self._state = _State.CLOSED
        self._mark_lost("session closed")
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        finally:
            # a cancellation of our caller must not leave the lease (and its keys) behind
            if revoke and self.client.is_open:
                try:
                    await asyncio.shield(self.client.lease_revoke(self.lease_id, timeout_s=self.client.config.timeout_s))
                except WhizorchError as exc:
                    # the lease expires by itself within its TTL
                    log.warning("could not revoke lease %x on close: %s", self.lease_id, exc)
        if self._failure is not None:
            raise self._failure

    async def __aenter__(self) -> Session:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the promise -----------------------------------------------------------------

    @property
    def is_lost(self) -> bool:
        """True once the lease may have expired (checked against the clock, too)."""
        if self.lost.is_set():
            return True
        if self._state is _State.OPEN and asyncio.get_running_loop().time() >= self._safe_until:
            self._mark_lost("keepalive deadline passed")
            return True
        return self._state is not _State.OPEN

    @property
    def remaining_s(self) -> float:
        """Seconds left before this session must consider itself lost."""
        if self.is_lost:
            return 0.0
        return max(0.0, self._safe_until - asyncio.get_running_loop().time())

    def call_timeout_s(self, timeout_s: float | None = None) -> float:
        """A deadline for a call made on this session's behalf: ``timeout_s`` (default
        the client's), but no longer than the session may still live, so a call that
        etcd holds (no leader yet) never outlasts what it was for."""
        default = self.client.config.timeout_s if timeout_s is None else timeout_s
        return max(0.05, min(default, self.remaining_s))

    def check(self) -> None:
        """Raise :class:`SessionLostError` unless the session is alive."""
        if self._state is _State.UNOPENED:
            raise ClosedError("the Session is not open; use 'async with Session(...)'")
        if self.is_lost:
            raise SessionLostError(
                f"session lost: {self.lost_reason or 'closed'}", lease=self.lease_id
            )

    def on_lost(self, callback: Callable[[Session], None]) -> Callable[[], None]:
        """Call ``callback(session)`` once when the session is lost; returns a remover."""
        if self.lost.is_set():
            callback(self)
            return lambda: None
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    async def wait_lost(self) -> None:
        """Return when the session is lost (by the clock, even if no task noticed)."""
        while not self.is_lost:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.01, self._safe_until - asyncio.get_running_loop().time())):
                    await self.lost.wait()

    def _mark_lost(self, reason: str) -> None:
        if self.lost.is_set():
            return
        self.lost_reason = reason
        self.lost.set()
        if reason != "session closed":
            log.warning("session %x lost: %s", self.lease_id, reason)
        callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            try:
                cb(self)
            except Exception:  # a callback's bug must not stop the others
                log.exception("session-lost callback failed")

    # -- the keepalive task ----------------------------------------------------------

    async def _keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        retry_s = min(0.25, self.keepalive_interval_s / 4)
        # a grant that took long (etcd electing a leader) leaves less than the usual
        # room before the conservative deadline: refresh early enough to keep it
        next_at = min(loop.time() + self.keepalive_interval_s, self._safe_until - self.keepalive_interval_s)
        try:
            while True:
                now = loop.time()
                if now >= self._safe_until:
                    self._mark_lost("keepalive failed past its deadline")
                    return
                await asyncio.sleep(max(0.0, min(next_at, self._safe_until) - now))
                sent = loop.time()
                if sent >= self._safe_until:
                    self._mark_lost("keepalive failed past its deadline")
                    return
                budget = self._safe_until - sent
                try:
                    async with asyncio.timeout(budget):
                        ttl = await self.client.lease_keepalive_once(
                            self.lease_id, timeout_s=max(0.05, min(budget, self.keepalive_interval_s))
                        )
                except LeaseNotFoundError:
                    self._mark_lost("lease expired or revoked at the server")
                    return
                except (WhizorchError, TimeoutError) as exc:
                    took = loop.time() - sent
                    log.info("keepalive of lease %x failed after %.3fs: %s", self.lease_id, took, exc)
                    next_at = loop.time() + retry_s
                    continue
                took = loop.time() - sent
                if took > self.keepalive_interval_s / 2:
                    log.warning("keepalive of lease %x took %.3fs (overrun)", self.lease_id, took)
                self._safe_until = sent + ttl - self.step_down_margin_s
                next_at = sent + self.keepalive_interval_s
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._failure = exc
            self._mark_lost(f"keepalive task failed: {exc!r}")
            raise
