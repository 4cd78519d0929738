"""Plain values returned by the adapter, and the Compare/Op builders for txns.

Protobuf messages stay inside the adapter: callers see these frozen attrs objects.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, Literal

import attrs

from whizorch._check import is_int
from whizorch.errors import ConfigError
from whizorch.etcd._proto import kv_pb2, rpc_pb2

__all__ = [
    "Compare",
    "DeleteResult",
    "EventType",
    "Header",
    "KeyValue",
    "Op",
    "PutResult",
    "RangeResult",
    "TxnResult",
    "WatchEvent",
    "prefix_end",
    "to_bytes",
]

KeyLike = str | bytes


def to_bytes(value: KeyLike, field: str = "key") -> bytes:
    """Encode a key or value (str as UTF-8); anything else is a clear ConfigError."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise ConfigError(f"{field} must be str or bytes", field=field, value=type(value).__name__)


def key_bytes(key: KeyLike) -> bytes:
    """A non-empty key as bytes."""
    data = to_bytes(key, "key")
    if not data:
        raise ConfigError("the key must not be empty", field="key", value=key)
    return data


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that selects every key starting with ``prefix``."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"  # every key from prefix on


@attrs.frozen
class Header:
    """etcd's response header: the store's revision when the request was served."""

    cluster_id: int
    member_id: int
    revision: int
    raft_term: int

    @classmethod
    def _from_pb(cls, pb: Any) -> Header:
        return cls(pb.cluster_id, pb.member_id, pb.revision, pb.raft_term)


@attrs.frozen
class KeyValue:
    """A key with its value and revisions."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def _from_pb(cls, pb: Any) -> KeyValue:
        return cls(pb.key, pb.value, pb.create_revision, pb.mod_revision, pb.version, pb.lease)


@attrs.frozen
class RangeResult:
    """Keys read by a range request."""

    header: Header
    kvs: list[KeyValue]
    count: int
    more: bool

    @property
    def first(self) -> KeyValue | None:
        """The first key returned, or None."""
        return self.kvs[0] if self.kvs else None


@attrs.frozen
class PutResult:
    """The outcome of a put: ``header.revision`` is the revision it created."""

    header: Header
    prev_kv: KeyValue | None


@attrs.frozen
class DeleteResult:
    """The outcome of a delete."""

    header: Header
    deleted: int
    prev_kvs: list[KeyValue]


@attrs.frozen
class TxnResult:
    """The outcome of a txn: which branch ran, and the responses of its ops."""

    header: Header
    succeeded: bool
    responses: list[RangeResult | PutResult | DeleteResult | TxnResult]


class EventType(enum.Enum):
    """Kind of a watch event."""

    PUT = 0
    DELETE = 1


@attrs.frozen
class WatchEvent:
    """One change seen by a watch; ``kv.mod_revision`` orders events."""

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None

    @property
    def revision(self) -> int:
        """The revision that made this change."""
        return self.kv.mod_revision


_CMP_RESULT = {
    "==": rpc_pb2.Compare.EQUAL,
    "!=": rpc_pb2.Compare.NOT_EQUAL,
    "<": rpc_pb2.Compare.LESS,
    ">": rpc_pb2.Compare.GREATER,
}


_CMP_TARGET = {
    "version": "VERSION",
    "create_revision": "CREATE",
    "mod_revision": "MOD",
    "value": "VALUE",
    "lease": "LEASE",
}


@attrs.frozen
class Compare:
    """One comparison of a txn, e.g. ``Compare.create_revision(key, "==", 0)``."""

    _pb: Any

    @staticmethod
    def _build(key: KeyLike, op: str, target: str, value: Any, range_end: bytes = b"") -> Compare:
        if op not in _CMP_RESULT:
            raise ConfigError("a compare operator must be one of == != < >", field="op", value=op)
        fields: dict[str, Any] = {target: value}
        pb = rpc_pb2.Compare(
            key=key_bytes(key),
            range_end=range_end,
            result=_CMP_RESULT[op],
            target=getattr(rpc_pb2.Compare, _CMP_TARGET[target]),
            **fields,
        )
        return Compare(pb)

    @classmethod
    def create_revision(cls, key: KeyLike, op: str, revision: int) -> Compare:
        """Compare the key's create revision (0 when the key does not exist)."""
        return cls._build(key, op, "create_revision", _rev(revision))

    @classmethod
    def mod_revision(cls, key: KeyLike, op: str, revision: int) -> Compare:
        """Compare the key's last modification revision (0 when absent)."""
        return cls._build(key, op, "mod_revision", _rev(revision))

    @classmethod
    def version(cls, key: KeyLike, op: str, version: int) -> Compare:
        """Compare the key's version (number of puts since creation; 0 when absent)."""
        return cls._build(key, op, "version", _rev(version))

    @classmethod
    def value(cls, key: KeyLike, op: str, value: KeyLike) -> Compare:
        """Compare the key's value."""
        return cls._build(key, op, "value", to_bytes(value, "value"))

    @classmethod
    def lease(cls, key: KeyLike, op: str, lease: int) -> Compare:
        """Compare the lease the key is attached to (0 when none)."""
        return cls._build(key, op, "lease", _rev(lease))


def _rev(value: Any) -> int:
    if not is_int(value, minimum=0):
        raise ConfigError("a revision must be a non-negative int", field="revision", value=value)
    return value


SortTarget = Literal["key", "version", "create", "mod", "value"]
SortOrder = Literal["none", "ascend", "descend"]


def range_request(
    key: KeyLike,
    *,
    range_end: bytes | None = None,
    prefix: bool = False,
    revision: int = 0,
    limit: int = 0,
    serializable: bool = False,
    keys_only: bool = False,
    count_only: bool = False,
    sort_target: SortTarget = "key",
    sort_order: SortOrder = "none",
    min_create_revision: int = 0,
    max_create_revision: int = 0,
) -> Any:
    """Build a RangeRequest (internal; used by the client and by ``Op.get``)."""
    kb = to_bytes(key, "key")
    if not kb and range_end is None and not prefix:
        raise ConfigError("the key must not be empty", field="key", value=key)
    end = prefix_end(kb) if prefix and kb else (b"\0" if prefix else (range_end or b""))
    return rpc_pb2.RangeRequest(
        key=kb or b"\0",
        range_end=end,
        revision=_rev(revision),
        limit=_rev(limit),
        serializable=serializable,
        keys_only=keys_only,
        count_only=count_only,
        sort_target=getattr(rpc_pb2.RangeRequest, sort_target.upper()),
        sort_order=getattr(rpc_pb2.RangeRequest, sort_order.upper()),
        min_create_revision=_rev(min_create_revision),
        max_create_revision=_rev(max_create_revision),
    )


def put_request(key: KeyLike, value: KeyLike, *, lease: int = 0, prev_kv: bool = False) -> Any:
    """Build a PutRequest (internal)."""
    return rpc_pb2.PutRequest(
        key=key_bytes(key), value=to_bytes(value, "value"), lease=_rev(lease), prev_kv=prev_kv
    )


def delete_request(
    key: KeyLike, *, prefix: bool = False, range_end: bytes | None = None, prev_kv: bool = False
) -> Any:
    """Build a DeleteRangeRequest (internal)."""
    kb = key_bytes(key)
    end = prefix_end(kb) if prefix else (range_end or b"")
    return rpc_pb2.DeleteRangeRequest(key=kb, range_end=end, prev_kv=prev_kv)


def txn_request(compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> Any:
    """Build a TxnRequest (internal)."""
    for c in compare:
        if not isinstance(c, Compare):
            raise ConfigError("txn compares must be Compare objects", field="compare", value=type(c).__name__)
    for branch, ops in (("success", success), ("failure", failure)):
        for o in ops:
            if not isinstance(o, Op):
                raise ConfigError("txn ops must be Op objects", field=branch, value=type(o).__name__)
    return rpc_pb2.TxnRequest(
        compare=[c._pb for c in compare],
        success=[o._pb for o in success],
        failure=[o._pb for o in failure],
    )


@attrs.frozen
class Op:
    """One operation inside a txn: ``Op.get``, ``Op.put``, ``Op.delete``, ``Op.txn``."""

    _pb: Any

    @classmethod
    def get(cls, key: KeyLike, **kwargs: Any) -> Op:
        """A range read; takes the keyword arguments of ``EtcdClient.get``."""
        return cls(rpc_pb2.RequestOp(request_range=range_request(key, **kwargs)))

    @classmethod
    def put(cls, key: KeyLike, value: KeyLike, *, lease: int = 0, prev_kv: bool = False) -> Op:
        """A put."""
        return cls(rpc_pb2.RequestOp(request_put=put_request(key, value, lease=lease, prev_kv=prev_kv)))

    @classmethod
    def delete(cls, key: KeyLike, *, prefix: bool = False, prev_kv: bool = False) -> Op:
        """A delete of one key or a prefix."""
        return cls(rpc_pb2.RequestOp(request_delete_range=delete_request(key, prefix=prefix, prev_kv=prev_kv)))

    @classmethod
    def txn(cls, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> Op:
        """A nested txn (etcd 3.3+)."""
        return cls(rpc_pb2.RequestOp(request_txn=txn_request(compare, success, failure)))

    @property
    def is_read(self) -> bool:
        """True when the op (recursively) writes nothing."""
        return _op_is_read(self._pb)


def _op_is_read(pb: Any) -> bool:
    kind = pb.WhichOneof("request")
    if kind == "request_range":
        return True
    if kind == "request_txn":
        return all(_op_is_read(o) for o in (*pb.request_txn.success, *pb.request_txn.failure))
    return False


def range_result(pb: Any) -> RangeResult:
    return RangeResult(Header._from_pb(pb.header), [KeyValue._from_pb(kv) for kv in pb.kvs], pb.count, pb.more)


def put_result(pb: Any) -> PutResult:
    return PutResult(Header._from_pb(pb.header), KeyValue._from_pb(pb.prev_kv) if pb.HasField("prev_kv") else None)


def delete_result(pb: Any) -> DeleteResult:
    return DeleteResult(Header._from_pb(pb.header), pb.deleted, [KeyValue._from_pb(kv) for kv in pb.prev_kvs])


def txn_result(pb: Any) -> TxnResult:
    out: list[RangeResult | PutResult | DeleteResult | TxnResult] = []
    for r in pb.responses:
        kind = r.WhichOneof("response")
        if kind == "response_range":
            out.append(range_result(r.response_range))
        elif kind == "response_put":
            out.append(put_result(r.response_put))
        elif kind == "response_delete_range":
            out.append(delete_result(r.response_delete_range))
        else:
            out.append(txn_result(r.response_txn))
    return TxnResult(Header._from_pb(pb.header), pb.succeeded, out)


def watch_event(pb: Any) -> WatchEvent:
    return WatchEvent(
        EventType.DELETE if pb.type == kv_pb2.Event.DELETE else EventType.PUT,
        KeyValue._from_pb(pb.kv),
        KeyValue._from_pb(pb.prev_kv) if pb.HasField("prev_kv") else None,
    )
