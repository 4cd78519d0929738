"""etcd's own history of keys, for integration tests that check who wrote what when.

One rule for when a history read is done, the same at any speed: a watch from
``since`` delivers every event in revision order, and it is done once it delivered the
last write it must contain, known before it starts (the newest live write in the
range, read first). No history read here stops on a silence or a clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from whizorch import EtcdClient, EventType, KeyValue, WatchEvent

__all__ = ["deleted_at", "events", "writes"]


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
    found = await events(client, key, prefix=prefix, since=since, until=until, timeout=timeout)
    return [ev.kv for ev in found if ev.type is EventType.PUT]


async def events(
    client: EtcdClient,
    key: str,
    *,
    prefix: bool = False,
    range_end: bytes | None = None,
    since: int,
    until: int = 0,
    prev_kv: bool = False,
    timeout: float = 30.0,
) -> list[WatchEvent]:
    """Every change (puts and deletes) of ``key`` (the keys under it, ``prefix``; or the
    range ``[key, range_end)``) from revision ``since`` through the newest write still
    live in it at ``until`` (0: now), in revision order, from etcd's history.

    Deletes after that newest live write are not included (nothing marks how far they
    go); a delete made by the same txn as that write may be missed too (its events are
    delivered together, the read stops at the write).
    """
    live = [
        kv for kv in (await client.get(key, prefix=prefix, range_end=range_end, revision=until)).kvs
        if kv.mod_revision >= since
    ]  # fmt: skip
    if not live:
        return []
    last = max(kv.mod_revision for kv in live)
    left = sum(1 for kv in live if kv.mod_revision == last)  # a txn writes several keys at one revision
    out: list[WatchEvent] = []
    async with asyncio.timeout(timeout), client.watch(
        key, prefix=prefix, range_end=range_end, start_revision=since, prev_kv=prev_kv
    ) as watch:
        async for ev in watch:
            if ev.revision > last:
                break
            out.append(ev)
            if ev.type is EventType.PUT and ev.revision == last:
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
