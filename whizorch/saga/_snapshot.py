"""The leader's rebuild read: everything under the namespace at one revision, in pages.

A new leader must see the namespace as it was at one revision (it then watches from
that revision + 1, so nothing is missed or seen twice). One Range over the whole
namespace does that, but with 100,000 retained sagas the answer is hundreds of MB in
one message: etcd builds it in memory, and a slow one blocks the member's other
readers. :func:`read_namespace` asks for the same snapshot in pages
(:meth:`EtcdClient.get_pages`), every page pinned to the first page's revision.

If etcd compacts that revision before the last page (auto-compaction running during
a long rebuild), the read starts again at a newer revision, up to ``attempts`` times.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from whizorch._check import is_int
from whizorch.errors import CompactedError, ConfigError
from whizorch.etcd import EtcdClient, KeyValue, Op, RangeResult

__all__ = ["DEFAULT_PAGE_SIZE", "read_many", "read_namespace"]

GETS_PER_TXN = 100
"""Reads per txn: within etcd's --max-txn-ops (128)."""
TXNS_AT_ONCE = 8

log = logging.getLogger("whizorch.saga")

DEFAULT_PAGE_SIZE = 2000
"""Keys per page: about 4 MB of finished saga records (about 1.8 KB each), well under
gRPC's and etcd's message limits, and few enough round trips (55 for 110,000 records)."""


async def read_namespace(
    client: EtcdClient, ns_prefix: bytes, *, page_size: int = DEFAULT_PAGE_SIZE, attempts: int = 3
) -> tuple[list[KeyValue], int]:
    """Every key under ``ns_prefix`` (e.g. ``b"whizorch/"``) in key order, and the
    revision they were all read at: what one ``client.get(ns_prefix, prefix=True)``
    returns as ``(res.kvs, res.header.revision)``, without one huge response.

    A compaction of the read's revision mid-read restarts it (at most ``attempts``
    reads); the last attempt's :class:`CompactedError` is raised.
    """
    if not isinstance(ns_prefix, bytes) or not ns_prefix.endswith(b"/"):
        raise ConfigError("ns_prefix must be bytes ending in '/'", field="ns_prefix", value=ns_prefix)
    if not is_int(attempts, minimum=1):
        raise ConfigError("attempts must be a positive int", field="attempts", value=attempts)
    for attempt in range(1, attempts + 1):
        kvs: list[KeyValue] = []
        revision = 0
        try:
            async for page in client.get_pages(ns_prefix, prefix=True, page_size=page_size):
                kvs.extend(page.kvs)
                revision = page.revision
        except CompactedError as exc:
            if attempt == attempts:
                raise
            log.info("namespace read at revision %d was compacted (%s); reading again", revision, exc)
            continue
        return kvs, revision
    raise AssertionError("unreachable")  # pragma: no cover


async def read_many(
    client: EtcdClient, keys: Sequence[bytes], revision: int, *, prefix: bool = False
) -> dict[bytes, list[KeyValue]]:
    """Each key (or prefix) read at ``revision``: many per txn, a few txns at once."""
    out: dict[bytes, list[KeyValue]] = {}
    chunks = [list(keys[i : i + GETS_PER_TXN]) for i in range(0, len(keys), GETS_PER_TXN)]
    gate = asyncio.Semaphore(TXNS_AT_ONCE)

    async def one(chunk: list[bytes]) -> None:
        async with gate:
            res = await client.txn([], [Op.get(k, prefix=prefix, revision=revision) for k in chunk])
        for k, got in zip(chunk, res.responses, strict=True):
            out[k] = got.kvs if isinstance(got, RangeResult) else []

    await asyncio.gather(*(one(c) for c in chunks))
    return out
