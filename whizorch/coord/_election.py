"""Election on etcd's election recipe (keys ``NAME/<lease hex>``, etcdctl-compatible).

The leader is the candidate whose key under ``NAME/`` has the lowest create_revision;
that revision is the leader's term and fencing token. A leader whose session is lost,
or whose key is deleted, is no longer leader: ``lost`` is set and ``is_leader`` turns
False, and its fenced writes fail at etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import attrs

from whizorch.coord._queue import Fence, enqueue, name_prefix, wait_turn
from whizorch.coord._session import Session
from whizorch.errors import ConfigError, LockTimeoutError, NotOwnerError, WhizorchError
from whizorch.etcd import Compare, EventType, KeyValue, Op, to_bytes

__all__ = ["Election", "LeaderInfo"]

log = logging.getLogger("whizorch.coord.election")


@attrs.frozen
class LeaderInfo:
    """The current leader: its key, proclaimed value, term (create revision) and lease."""

    key: bytes
    value: bytes
    revision: int
    lease: int

    @classmethod
    def _from_kv(cls, kv: KeyValue) -> LeaderInfo:
        return cls(kv.key, kv.value, kv.create_revision, kv.lease)


class Election:
    """Campaign for leadership of ``name`` on a session's lease.

    ``async with Election(session, "orchestrator") as election:`` — leaving the block
    resigns if leader and stops monitoring.
    """

    def __init__(self, session: Session, /, name: str | bytes) -> None:
        if not isinstance(session, Session):
            raise ConfigError("Election needs a Session", field="session", value=type(session).__name__)
        self.session = session
        self.client = session.client
        self.name = name
        self.prefix = name_prefix(name, "election")
        self._fence: Fence | None = None
        self._monitor: asyncio.Task[None] | None = None
        self.lost = asyncio.Event()
        self._campaigning = False

    # -- state ---------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True while this candidate leads and its session is alive."""
        return self._fence is not None and not self.lost.is_set() and not self.session.is_lost

    @property
    def fence(self) -> Fence:
        """The leader's fencing token; raises NotOwnerError when not leader."""
        if not self.is_leader or self._fence is None:
            raise NotOwnerError("not the leader", key=self.prefix)
        return self._fence

    @property
    def term(self) -> int:
        """The leader's term: its key's create revision."""
        return self.fence.token

    # -- campaign ------------------------------------------------------------------------

    async def campaign(self, value: str | bytes, *, timeout_s: float | None = None) -> Fence:
        """Wait to become leader; proclaim ``value``; return the fencing token.

        On timeout (:class:`LockTimeoutError`), cancellation or error my candidate key
        is deleted: nothing is left behind.
        """
        data = to_bytes(value, "value")
        if timeout_s is not None and timeout_s <= 0:
            raise ConfigError("timeout_s must be positive", field="timeout_s", value=timeout_s)
        if self._fence is not None and self.is_leader:
            await self.proclaim(data)
            return self._fence
        if self._campaigning:
            raise ConfigError("a campaign is already running on this Election", field="name", value=self.name)
        self._campaigning = True
        my_key = self.prefix + f"{self.session.lease_id:x}".encode()
        try:
            async with asyncio.timeout(timeout_s):
                pos = await enqueue(self.client, self.prefix, self.session, data)
                if not pos.is_first:
                    log.debug("election %r: waiting behind earlier candidates", self.name)
                await wait_turn(self.client, self.prefix, self.session, pos)
                fence = Fence(pos.key, pos.revision)
                if not pos.created:  # my key was there already: make the value mine
                    await self._guarded_put(fence, data)
        except BaseException as exc:
            await self._delete_mine(my_key)
            if isinstance(exc, TimeoutError) and not isinstance(exc, WhizorchError):
                raise LockTimeoutError("campaign not won in time", key=self.prefix, timeout_s=timeout_s) from None
            raise
        finally:
            self._campaigning = False
        self._fence = fence
        self.lost = asyncio.Event()
        self._monitor = asyncio.get_running_loop().create_task(
            self._watch_leadership(fence), name=f"whizorch-election-{self.name!r}"
        )
        log.info("election %r: elected, term %d", self.name, fence.token)
        return fence

    async def proclaim(self, value: str | bytes) -> None:
        """Change the leader's value without an election (fenced)."""
        data = to_bytes(value, "value")
        await self._guarded_put(self.fence, data)

    async def _guarded_put(self, fence: Fence, value: bytes) -> None:
        res = await self.client.txn(
            [fence.compare()], [Op.put(fence.key, value, lease=self.session.lease_id)], idempotent=True
        )
        if not res.succeeded:
            self._depose("leader key was replaced or deleted")
            raise NotOwnerError("not the leader any more", key=fence.key, token=fence.token)

    async def resign(self) -> None:
        """Give up leadership (fenced delete of my key); idempotent."""
        fence, self._fence = self._fence, None
        self.lost.set()
        try:
            await self._stop_monitor()
        finally:
            # a cancellation of our caller must not leave the leader key behind
            # a lost session's key goes with its lease: no write that etcd may not answer
            if fence is not None and self.client.is_open and not self.session.is_lost:
                await asyncio.shield(self.client.txn([fence.compare()], [Op.delete(fence.key)], idempotent=True))

    async def _delete_mine(self, my_key: bytes) -> None:
        if not self.client.is_open or self.session.is_lost:
            return  # the key goes with the lease
        try:
            await asyncio.shield(
                self.client.txn(
                    [Compare.lease(my_key, "==", self.session.lease_id)], [Op.delete(my_key)], idempotent=True
                )
            )
        except WhizorchError as exc:
            log.warning("could not delete candidate key %r: %s (it expires with the lease)", my_key, exc)

    # -- monitoring ----------------------------------------------------------------------

    def _depose(self, reason: str) -> None:
        if not self.lost.is_set():
            log.warning("election %r: leadership lost: %s", self.name, reason)
            self.lost.set()

    async def _watch_leadership(self, fence: Fence) -> None:
        """Until resigned: set ``lost`` when the session is lost or my key changes."""
        lost_wait = asyncio.ensure_future(self.session.wait_lost())
        try:
            async with self.client.watch(fence.key, start_revision=fence.token + 1) as watch:
                while (ev := await watch.next_unless(lost_wait)) is not None:
                    if ev.type is EventType.DELETE or ev.kv.create_revision != fence.token:
                        self._depose("leader key deleted")
                        return
            if lost_wait.done():
                self._depose(f"session lost ({self.session.lost_reason})")
            else:
                self._depose("the watch on the leader key ended")
        except WhizorchError as exc:
            # cannot monitor: be safe and step down
            self._depose(f"cannot watch the leader key: {exc}")
        finally:
            lost_wait.cancel()
            await asyncio.gather(lost_wait, return_exceptions=True)

    async def _stop_monitor(self) -> None:
        task, self._monitor = self._monitor, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def wait_lost(self) -> None:
        """Return when leadership is lost (resign, session loss or key deleted)."""
        await self.lost.wait()

    # -- reading -------------------------------------------------------------------------

    async def leader(self) -> LeaderInfo | None:
        """The current leader, or None when nobody leads."""
        res = await self.client.get(self.prefix, prefix=True, sort_target="create", sort_order="ascend", limit=1)
        return LeaderInfo._from_kv(res.kvs[0]) if res.kvs else None

    async def observe(self) -> AsyncIterator[LeaderInfo | None]:
        """Yield the leader now and after every change (None: no leader)."""
        res = await self.client.get(self.prefix, prefix=True, sort_target="create", sort_order="ascend", limit=1)
        current = LeaderInfo._from_kv(res.kvs[0]) if res.kvs else None
        yield current
        async with self.client.watch(self.prefix, prefix=True, start_revision=res.header.revision + 1) as watch:
            async for _ev in watch:
                now = await self.leader()
                if now != current:
                    current = now
                    yield current

    async def __aenter__(self) -> Election:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(WhizorchError):
            await self.resign()
