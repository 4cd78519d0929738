"""Versioned state: values whose every change is a compare-and-set on revisions.

Each write is one txn: the CAS compare (create-if-absent, or ``mod_revision ==
expected``) plus, optionally, a fence (``create_revision(ownerKey) == token``). When
the txn fails, the failure branch reads the key and the fence key in the same txn, so
the error says exactly which compare failed: :class:`ConflictError` (someone else
wrote) or :class:`FencedError` (ownership is gone).

CAS writes are not resent after an unknown outcome (:class:`OutcomeUnknownError`):
re-read and compare revisions to learn whether the write landed.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from whizorch._check import is_int
from whizorch.coord._queue import Fence, fence_list
from whizorch.errors import ConfigError, ConflictError, FencedError
from whizorch.etcd import (
    Compare,
    EtcdClient,
    KeyLike,
    Op,
    RangeResult,
    TxnResult,
    key_bytes,
    to_bytes,
)

__all__ = ["Versioned", "VersionedStore"]


@attrs.frozen
class Versioned:
    """A value with the revisions that version it."""

    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int
    version: int


class VersionedStore:
    """Versioned keys under an optional ``prefix`` of one client."""

    def __init__(self, client: EtcdClient, /, prefix: str | bytes = b"") -> None:
        self.client = client
        self.prefix = to_bytes(prefix, "prefix")

    def _key(self, key: KeyLike) -> bytes:
        return self.prefix + key_bytes(key)

    async def get(self, key: KeyLike, *, serializable: bool = False) -> Versioned | None:
        """The value and its revisions, or None when absent."""
        res = await self.client.get(self._key(key), serializable=serializable)
        if not res.kvs:
            return None
        kv = res.kvs[0]
        return Versioned(kv.key, kv.value, kv.mod_revision, kv.create_revision, kv.version)

    async def create(
        self, key: KeyLike, value: KeyLike, *, fence: Fence | Sequence[Fence] | None = None, lease: int = 0
    ) -> int:
        """Create ``key`` if absent; return its revision.

        Raises :class:`ConflictError` (with ``actual_revision``) if it exists.
        """
        k = self._key(key)
        return await self._write(k, to_bytes(value, "value"), Compare.create_revision(k, "==", 0), 0, fence, lease)

    async def compare_and_set(
        self,
        key: KeyLike,
        value: KeyLike,
        *,
        expected_revision: int,
        fence: Fence | Sequence[Fence] | None = None,
        lease: int = 0,
    ) -> int:
        """Write ``key`` only if its mod_revision is still ``expected_revision``.

        ``expected_revision=0`` means "only if absent". Returns the new mod_revision.
        """
        if not is_int(expected_revision, minimum=0):
            raise ConfigError(
                "expected_revision must be a non-negative int", field="expected_revision", value=expected_revision
            )
        k = self._key(key)
        cmp = Compare.mod_revision(k, "==", expected_revision)
        return await self._write(k, to_bytes(value, "value"), cmp, expected_revision, fence, lease)

    async def delete(
        self, key: KeyLike, *, expected_revision: int | None = None, fence: Fence | Sequence[Fence] | None = None
    ) -> bool:
        """Delete ``key`` (only at ``expected_revision`` when given). True if deleted."""
        k = self._key(key)
        compares = _fences(fence)
        if expected_revision is not None:
            compares.append(Compare.mod_revision(k, "==", expected_revision))
        if not compares:
            res = await self.client.delete(k)
            return res.deleted > 0
        txn = await self.client.txn(compares, [Op.delete(k)], _diagnose(k, fence))
        if not txn.succeeded:
            _raise_failure(k, txn, fence, expected_revision)
        return True

    async def _write(
        self,
        k: bytes,
        value: bytes,
        cmp: Compare,
        expected: int,
        fence: Fence | Sequence[Fence] | None,
        lease: int,
    ) -> int:
        txn = await self.client.txn(
            [*_fences(fence), cmp], [Op.put(k, value, lease=lease)], _diagnose(k, fence)
        )
        if not txn.succeeded:
            _raise_failure(k, txn, fence, expected)
        return txn.header.revision


def _fences(fence: Fence | Sequence[Fence] | None) -> list[Compare]:
    return [f.compare() for f in fence_list(fence)]


def _diagnose(k: bytes, fence: Fence | Sequence[Fence] | None) -> list[Op]:
    """Failure-branch reads: the key, then each fence key."""
    return [Op.get(k), *(Op.get(f.key) for f in fence_list(fence))]


def _raise_failure(k: bytes, txn: TxnResult, fence: Fence | Sequence[Fence] | None, expected: int | None) -> None:
    for f, res in zip(fence_list(fence), txn.responses[1:], strict=True):
        assert isinstance(res, RangeResult)
        actual = res.kvs[0].create_revision if res.kvs else 0
        if actual != f.token:
            raise FencedError(
                "write rejected: the fencing token is no longer current",
                key=k,
                fence_key=f.key,
                token=f.token,
                current_token=actual,
            )
    cur = txn.responses[0]
    assert isinstance(cur, RangeResult)
    actual_rev = cur.kvs[0].mod_revision if cur.kvs else 0
    raise ConflictError(
        "compare-and-set lost: the key changed", key=k, expected_revision=expected, actual_revision=actual_rev
    )
