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
from whizorch.saga import SagaRecord
from whizorch.saga._shards import shard_of

__all__ = ["deleted_at", "events", "shard_term_violations", "writes"]


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


async def events(client: EtcdClient, prefix: str, *, since: int, timeout: float = 30.0) -> list[WatchEvent]:
    """Every event (puts and deletes) under ``prefix`` from revision ``since`` until now,
    in revision order: a marker key put under the prefix ends the read (the watch
    delivered everything before it), and is left out."""
    marker = f"{prefix}~history-marker"
    end = (await client.put(marker, b"")).header.revision
    out: list[WatchEvent] = []
    async with asyncio.timeout(timeout), client.watch(prefix, prefix=True, start_revision=since) as watch:
        async for ev in watch:
            if ev.revision >= end:
                break
            out.append(ev)
    await client.delete(marker)
    return out


def shard_term_violations(history: list[WatchEvent], namespace: str, shards: int) -> list[str]:
    """Saga record writes whose writer did not lead the saga's shard at that revision.

    From the namespace's history: each shard's election keys (``leader/<k>/<lease>``,
    live from their put to their delete), and each saga record put with its
    ``leader_term``. A write at revision R by term T for a saga of shard k is right only
    when, at R, the lowest live key of shard k's election has create revision T: the
    writer led that shard then. Two leaders of a shard writing in overlapping terms, a
    term writing after its key was gone, or a term of another shard's election writing,
    each shows up here."""
    terms: dict[int, list[list[int]]] = {}  # shard -> [create revision, delete revision (0: live)]
    open_: dict[bytes, list[int]] = {}  # an election key -> its live interval
    head = f"{namespace}/leader/".encode()
    saga_head = f"{namespace}/saga/".encode()
    bad: list[str] = []
    for ev in history:
        if ev.kv.key.startswith(head):
            shard_text, _, _ = ev.kv.key[len(head) :].partition(b"/")
            if ev.type is EventType.PUT and ev.kv.key not in open_:  # a campaign (a proclaim re-puts)
                open_[ev.kv.key] = [ev.kv.create_revision, 0]
                terms.setdefault(int(shard_text), []).append(open_[ev.kv.key])
            elif ev.type is EventType.DELETE and ev.kv.key in open_:
                open_.pop(ev.kv.key)[1] = ev.revision
        elif ev.kv.key.startswith(saga_head) and ev.type is EventType.PUT:
            rec = SagaRecord.from_json(ev.kv.value)
            shard = shard_of(rec.id, shards)
            live = [c for c, d in terms.get(shard, []) if c <= ev.revision and (d == 0 or ev.revision < d)]
            if not live or min(live) != rec.leader_term:
                bad.append(
                    f"{rec.id} (shard {shard}) written at revision {ev.revision} by term {rec.leader_term}; "
                    f"the shard's leader then: {min(live) if live else 'none'}"
                )
    return bad
