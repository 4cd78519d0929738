"""The etcd queue recipe shared by locks and elections (etcd's ``concurrency`` package).

Layout: ``NAME/<lease id in lowercase hex>``; the key with the lowest create_revision
under ``NAME/`` owns. A lock and an election with the same NAME share one queue, and
``etcdctl lock``/``etcdctl elect`` interoperate with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import attrs

from whizorch.coord._session import Session
from whizorch.errors import ConfigError, NotOwnerError
from whizorch.etcd import Compare, EtcdClient, EventType, KeyValue, Op, RangeResult

__all__ = ["Fence", "QueuePosition", "enqueue", "fence_list", "name_prefix", "wait_turn"]


@attrs.frozen
class Fence:
    """A fencing token: owner key + its create revision.

    Guarded writes include :meth:`compare`, so they fail once the key was deleted or
    re-created (lease lost, lock released, leader replaced).
    """

    key: bytes
    token: int

    def compare(self) -> Compare:
        """The txn compare ``create_revision(key) == token``."""
        return Compare.create_revision(self.key, "==", self.token)


def fence_list(fence: Fence | Sequence[Fence] | None) -> list[Fence]:
    """``fence`` (one, a sequence, or None) as a list; anything else is a ConfigError."""
    if fence is None:
        return []
    if isinstance(fence, Fence):
        return [fence]
    if isinstance(fence, Sequence) and not isinstance(fence, (str, bytes)):
        fences = list(fence)
        if all(isinstance(f, Fence) for f in fences):
            return fences
    raise ConfigError(
        "fence must be a Fence or a sequence of Fences (lock.fence / election.fence)",
        field="fence",
        value=type(fence).__name__,
    )


@attrs.frozen
class QueuePosition:
    """My key in the queue and its create revision."""

    key: bytes
    revision: int
    is_first: bool
    created: bool
    """False when my key already existed (the same session queued before)."""


def name_prefix(name: str | bytes, what: str) -> bytes:
    """``NAME/`` as bytes, with a clear error for bad names."""
    if isinstance(name, str):
        raw = name.encode()
    elif isinstance(name, bytes):
        raw = name
    else:
        raise ConfigError(f"a {what} name must be str or bytes", field="name", value=type(name).__name__)
    if not raw or not raw.strip(b"/"):
        raise ConfigError(f"a {what} name must not be empty", field="name", value=name)
    return raw + b"/"


def _first(result: Any) -> KeyValue | None:
    return result.kvs[0] if isinstance(result, RangeResult) and result.kvs else None


async def enqueue(client: EtcdClient, prefix: bytes, session: Session, value: bytes) -> QueuePosition:
    """Put my key (create-if-absent, on the session's lease); learn whether I am first.

    Idempotent: resending after a lost answer finds my key and returns the same result.
    """
    session.check()
    my_key = prefix + f"{session.lease_id:x}".encode()
    first_by_create = Op.get(prefix, prefix=True, sort_target="create", sort_order="ascend", limit=1)
    res = await client.txn(
        [Compare.create_revision(my_key, "==", 0)],
        [Op.put(my_key, value, lease=session.lease_id), first_by_create],
        [Op.get(my_key), first_by_create],
        idempotent=True,
        timeout_s=session.call_timeout_s(),
    )
    if res.succeeded:
        my_rev = res.header.revision
    else:
        mine = _first(res.responses[0])
        if mine is None:  # pragma: no cover - the compare said it exists
            raise NotOwnerError("queue key vanished while enqueueing", key=my_key)
        my_rev = mine.create_revision
    first = _first(res.responses[1])
    is_first = first is not None and first.create_revision == my_rev
    return QueuePosition(my_key, my_rev, is_first, res.succeeded)


async def wait_turn(client: EtcdClient, prefix: bytes, session: Session, pos: QueuePosition) -> None:
    """Wait until every key created before mine under ``prefix`` is gone.

    Then re-read my own key: if it is gone, my lease expired while I waited and I do
    not own (etcd's fix for the Jepsen finding). Raises SessionLostError/NotOwnerError.
    """
    if pos.is_first:
        return  # the enqueue txn itself saw my key first: owned at its revision
    while True:
        session.check()
        prev = await client.get(
            prefix,
            prefix=True,
            max_create_revision=pos.revision - 1,
            sort_target="create",
            sort_order="descend",
            limit=1,
        )
        if not prev.kvs:
            break
        await _wait_deleted(client, prev.kvs[0].key, prev.kvs[0].create_revision, session)
    mine = await client.get(pos.key)
    if not mine.kvs or mine.kvs[0].create_revision != pos.revision:
        session.check()
        raise NotOwnerError("my queue key was deleted while waiting (lease expired?)", key=pos.key)


async def _wait_deleted(client: EtcdClient, key: bytes, create_revision: int, session: Session) -> None:
    """Return once ``key`` (created at ``create_revision``) is gone.

    The watch starts from "now" and the key is read after the watch exists: a watch
    from a past revision is "unsynced" in etcd and caught up only by its 100 ms resync
    loop, which would add up to 100 ms to every hand-over racing the watch's creation.
    """
    async with client.watch(key) as watch:
        lost = asyncio.ensure_future(session.wait_lost())
        created = asyncio.ensure_future(watch.wait_created(timeout_s=None))
        try:
            await asyncio.wait({created, lost}, return_when=asyncio.FIRST_COMPLETED)
            if created.done() and not lost.done():
                created.result()
                cur = await client.get(key, keys_only=True)
                if not cur.kvs or cur.kvs[0].create_revision != create_revision:
                    return
                while (event := await watch.next_unless(lost)) is not None:
                    if event.type is EventType.DELETE:
                        return
        finally:
            for fut in (lost, created):
                fut.cancel()
            await asyncio.gather(lost, created, return_exceptions=True)
    session.check()
    raise NotOwnerError("the watch ended while waiting for my turn", key=key)
