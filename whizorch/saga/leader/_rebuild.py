"""What a new leader of a shard reads to take it over: what is in flight, nothing more.

The in-flight index (``<ns>/live/<shard>/<saga id>``, written by the adoption and
deleted by the write that ends a saga) names the shard's sagas in flight, so taking a
shard over reads, at one revision: that index, those records, their inputs and results,
the submissions not adopted yet (``submit/`` holds only those), the cancel requests
(deleted when a saga ends), the tasks and the quarantine notes. Nothing grows with the
number of finished sagas retained (docs/design.md, "Shards").

Nothing here writes; the term turns the snapshot into its cache.
"""

from __future__ import annotations

import asyncio

import attrs

from whizorch.etcd import EtcdClient, KeyValue
from whizorch.saga._keys import Keys
from whizorch.saga._shards import shard_of
from whizorch.saga._snapshot import read_many

__all__ = ["Snapshot", "read_shard"]


@attrs.define
class Snapshot:
    """One shard at ``revision``, as its new leader needs it."""

    revision: int
    records: list[KeyValue]
    """The records of the sagas in flight (an index entry whose record is gone: none)."""
    inputs: dict[bytes, list[KeyValue]]
    """``input/<id>`` of each, by key."""
    results: dict[bytes, list[KeyValue]]
    """Each saga's results in each region it ran in, by ``run/<region>/<id>/`` prefix."""
    submits: list[KeyValue]
    """Submissions of this shard not adopted yet (with a key that does not parse: shard 0's)."""
    cancels: set[bytes]
    """Cancel request keys of this shard."""
    tasks: list[KeyValue]
    """Tasks of this shard's sagas."""
    quarantine: list[KeyValue]


def _of_shard(keys: Keys, key: bytes, kind: str, shard: int, shards: int) -> bool:
    """A ``<kind>/<saga id>...`` key belongs to ``shard`` (one that does not parse: to 0,
    whose leader quarantines it)."""
    try:
        parts = keys.split(key, kind)
        sid = parts[2] if kind == "task" and len(parts) > 2 else parts[0]
    except Exception:
        return shard == 0
    return shard_of(sid, shards) == shard


async def read_shard(client: EtcdClient, keys: Keys, shard: int, shards: int) -> Snapshot:
    """Read one shard's state in flight at one revision."""
    live = await client.get(keys.live_shard(shard), prefix=True, keys_only=True)
    rev = live.header.revision
    head = len(keys.live_shard(shard))
    ids = [kv.key[head:].decode(errors="replace") for kv in live.kvs]
    got, inputs, submits, cancels, tasks, notes = await asyncio.gather(
        read_many(client, [keys.saga(i) for i in ids], rev),
        read_many(client, [keys.input(i) for i in ids], rev),
        client.get(keys.prefix("submit"), prefix=True, revision=rev),
        client.get(keys.prefix("cancel"), prefix=True, keys_only=True, revision=rev),
        client.get(keys.prefix("task"), prefix=True, revision=rev),
        client.get(keys.prefix("quarantine"), prefix=True, revision=rev),
    )
    records = [kvs[0] for kvs in got.values() if kvs]
    return Snapshot(
        revision=rev,
        records=records,
        inputs=inputs,
        results={},
        submits=[kv for kv in submits.kvs if _of_shard(keys, kv.key, "submit", shard, shards)],
        cancels={kv.key for kv in cancels.kvs if _of_shard(keys, kv.key, "cancel", shard, shards)},
        tasks=[kv for kv in tasks.kvs if _of_shard(keys, kv.key, "task", shard, shards)],
        quarantine=notes.kvs,
    )


async def read_results(
    client: EtcdClient, keys: Keys, wanted: dict[str, list[str]], revision: int
) -> dict[bytes, list[KeyValue]]:
    """The results each saga (id -> the regions it ran in) recorded, at ``revision``."""
    prefixes = [keys.results(region, sid) for sid, regions in wanted.items() for region in regions]
    return await read_many(client, prefixes, revision, prefix=True)
