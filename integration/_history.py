"""etcd's own history of keys, for integration tests that check who wrote what when.

One rule for when a history read is done, the same at any speed: a watch from
``since`` delivers every event in revision order, and it is done once it delivered the
last write it must contain, known before it starts (the newest live write in the
range, read first). No history read here stops on a silence or a clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from whizorch import EtcdClient, EventType, KeyValue

__all__ = ["deleted_at", "writes"]


async def writes(
    client: EtcdClient, key: str, *, prefix: bool = False, since: int, until: int = 0, timeout: float = 30.0
) -> list[KeyValue]:
    """Every write (put) of ``key`` (or of the keys under it, ``prefix``) from revision
    ``since`` through ``until`` (0: now), in revision order, from etcd's history.

    The read ends with the newest write that is still live at ``until``: a key deleted
    after its last write within the range contributes its writes only up to that point
    when they come after every live one (the tests read quiet ranges, where nothing is
    deleted meanwhile).
    """
    live = [kv for kv in (await client.get(key, prefix=prefix, revision=until)).kvs if kv.mod_revision >= since]
    if not live:
        return []
    last = max(kv.mod_revision for kv in live)
    left = sum(1 for kv in live if kv.mod_revision == last)  # a txn writes several keys at one revision
    out: list[KeyValue] = []
    async with asyncio.timeout(timeout), client.watch(key, prefix=prefix, start_revision=since) as watch:
        async for ev in watch:
            if ev.revision > last:
                break
            if ev.type is EventType.PUT:
                out.append(ev.kv)
                if ev.revision == last:
                    left -= 1
                    if left == 0:
                        break
    return out


async def deleted_at(
    client: EtcdClient,
    key: str | bytes,
    *,
    since: int,
    prefix: bool = False,
    which: Callable[[KeyValue], bool] | None = None,
    timeout: float = 30.0,
) -> int:
    """The revision at which ``key`` was deleted (a lease that ended deletes its keys),
    read from etcd's history from ``since``; with ``prefix``, the first key under it
    that ``which`` picks (by its put event) and that is then deleted."""
    picked: bytes | None = None if prefix else (key.encode() if isinstance(key, str) else key)
    async with asyncio.timeout(timeout), client.watch(key, prefix=prefix, start_revision=since) as watch:
        async for ev in watch:
            if picked is None and ev.type is EventType.PUT and (which is None or which(ev.kv)):
                picked = ev.kv.key
            elif picked is not None and ev.kv.key == picked and ev.type is EventType.DELETE:
                return ev.revision
    raise AssertionError(f"the watch on {key!r} ended before the key was deleted")  # pragma: no cover
