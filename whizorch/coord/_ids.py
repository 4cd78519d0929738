"""Global IDs from etcd revisions.

A put on one key creates one new revision of the whole store: unique, and monotonic
over the cluster's life (revisions never go back, not even after compaction or a
restore from a snapshot of the same cluster). IDs are not dense: every other write in
the cluster also takes a revision.
"""

from __future__ import annotations

from whizorch.etcd import EtcdClient, KeyLike, key_bytes

__all__ = ["GlobalIds"]


class GlobalIds:
    """``await ids.next()`` returns a new cluster-wide unique, increasing int."""

    def __init__(self, client: EtcdClient, /, key: KeyLike = b"whizorch/ids") -> None:
        self.client = client
        self.key = key_bytes(key)

    async def next(self) -> int:
        """One new ID (one etcd write).

        A put whose answer was lost is resent: the revision it may have taken is
        simply skipped (IDs need not be dense), so resending is harmless.
        """
        res = await self.client.put(self.key, b"", idempotent=True)
        return res.header.revision
