"""Lock: a mutex on an etcd lease, with the lock key's revision as fencing token.

Mutually exclusive with ``etcdctl lock NAME`` and etcd's Go ``concurrency.Mutex``.
A lock alone is not safe against a paused holder (Jepsen): make every write it guards
a txn that includes :meth:`Lock.fence` ``.compare()`` (see :mod:`whizorch.coord._state`).
"""

from __future__ import annotations

import asyncio
import logging

from whizorch._check import is_int
from whizorch.coord._queue import Fence, enqueue, name_prefix, wait_turn
from whizorch.coord._session import Session
from whizorch.errors import ConfigError, LockTimeoutError, NotOwnerError, WhizorchError
from whizorch.etcd import Compare, EtcdClient, Op, to_bytes

__all__ = ["Lock"]

log = logging.getLogger("whizorch.coord.lock")


class Lock:
    """A distributed lock named ``name``.

    ``Lock(session, "orders")`` queues on the session's lease (one session holds a
    given name at most once). ``Lock(client, "orders", ttl_s=10)`` opens a session of
    its own for each acquisition and revokes it on release.

    ``async with lock:`` acquires (waiting as long as it takes) and releases;
    ``await lock.acquire(timeout_s=...)`` returns the fencing token.
    """

    def __init__(
        self,
        target: Session | EtcdClient,
        /,
        name: str | bytes,
        *,
        ttl_s: int = 10,
        value: str | bytes = b"",
    ) -> None:
        self.prefix = name_prefix(name, "lock")
        self.name = name
        if isinstance(target, Session):
            self._session: Session | None = target
            self._client = target.client
            self._own_session = False
        elif isinstance(target, EtcdClient):
            self._session = None
            self._client = target
            self._own_session = True
        else:
            raise ConfigError("Lock needs a Session or an EtcdClient", field="target", value=type(target).__name__)
        if not is_int(ttl_s, minimum=1):
            raise ConfigError("ttl_s must be a whole number of seconds >= 1", field="ttl_s", value=ttl_s)
        self.ttl_s = ttl_s
        self.value = to_bytes(value, "value")
        self._fence: Fence | None = None

    @property
    def session(self) -> Session | None:
        """The session whose lease holds the lock (None until acquired, for own sessions)."""
        return self._session

    @property
    def fence(self) -> Fence:
        """The fencing token of the current hold; raises NotOwnerError when not held."""
        if self._fence is None:
            raise NotOwnerError("the lock is not held", key=self.prefix)
        return self._fence

    @property
    def token(self) -> int:
        """The fencing token: the lock key's create revision (monotonic per cluster)."""
        return self.fence.token

    @property
    def is_held(self) -> bool:
        """True while acquired and the session is not lost (a local belief: fence writes)."""
        return self._fence is not None and self._session is not None and not self._session.is_lost

    async def acquire(self, *, timeout_s: float | None = None) -> int:
        """Wait for the lock; return the fencing token.

        Raises :class:`LockTimeoutError` after ``timeout_s``. On timeout, cancellation or
        any error, nothing is left behind: my queue key is deleted (and an own session's
        lease revoked).
        """
        if self._fence is not None:
            raise ConfigError("this Lock is already held; release it first", field="name", value=self.name)
        if timeout_s is not None and timeout_s <= 0:
            raise ConfigError("timeout_s must be positive", field="timeout_s", value=timeout_s)
        if self._own_session:
            self._session = Session(self._client, ttl_s=self.ttl_s)
        session = self._session
        assert session is not None
        my_key: bytes | None = None
        try:
            async with asyncio.timeout(timeout_s):
                if self._own_session:
                    await session.open()
                pos = await enqueue(self._client, self.prefix, session, self.value)
                my_key = pos.key
                await wait_turn(self._client, self.prefix, session, pos)
        except BaseException as exc:
            await self._abandon(my_key or self.prefix + f"{session.lease_id:x}".encode())
            if isinstance(exc, TimeoutError) and not isinstance(exc, WhizorchError):
                raise LockTimeoutError("lock not acquired in time", key=self.prefix, timeout_s=timeout_s) from None
            raise
        self._fence = Fence(pos.key, pos.revision)
        log.debug("lock %r acquired, token %d", self.name, pos.revision)
        return pos.revision

    async def release(self) -> None:
        """Release the lock: delete my key only if it is still mine. Idempotent."""
        fence, self._fence = self._fence, None
        if fence is None:
            return
        try:
            if self._client.is_open:
                await asyncio.shield(self._client.txn([fence.compare()], [Op.delete(fence.key)], idempotent=True))
        finally:
            await self._close_own_session()

    async def _abandon(self, my_key: bytes) -> None:
        """Delete my queue key (if still mine) after a failed or cancelled acquire."""
        session = self._session
        try:
            if session is not None and self._client.is_open and not self._own_session:
                await asyncio.shield(
                    self._client.txn(
                        [Compare.lease(my_key, "==", session.lease_id)], [Op.delete(my_key)], idempotent=True
                    )
                )
        except WhizorchError as exc:
            log.warning("could not delete lock key %r after a failed acquire: %s", my_key, exc)
        finally:
            await self._close_own_session()

    async def _close_own_session(self) -> None:
        if self._own_session and self._session is not None:
            session, self._session = self._session, None
            await asyncio.shield(session.close())

    async def __aenter__(self) -> Lock:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()

    def __repr__(self) -> str:
        state = f"held token={self._fence.token}" if self._fence else "not held"
        return f"<Lock {self.name!r} {state}>"

