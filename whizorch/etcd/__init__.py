"""Layer 1: the thin asyncio etcd v3 adapter (grpc.aio). Knows nothing of sagas.

etcd's auth administration (roles, permissions, users) is :mod:`whizorch.etcd.auth`.
"""

from whizorch.etcd._batch import BatchRefused, TxnBatcher
from whizorch.etcd._client import (
    CallObserver,
    CallTiming,
    EtcdClient,
    LeaseInfo,
    Member,
    Page,
    Status,
)
from whizorch.etcd._config import AuthConfig, EtcdConfig, TLSConfig, parse_endpoints
from whizorch.etcd._types import (
    Compare,
    DeleteResult,
    EventType,
    Header,
    KeyLike,
    KeyValue,
    Op,
    PutResult,
    RangeResult,
    TxnResult,
    WatchEvent,
    key_bytes,
    prefix_end,
    to_bytes,
)
from whizorch.etcd._versions import version_warning
from whizorch.etcd._watch import Watch
from whizorch.etcd.auth import Permission, PermType

__all__ = [
    "AuthConfig",
    "BatchRefused",
    "CallObserver",
    "CallTiming",
    "Compare",
    "DeleteResult",
    "EtcdClient",
    "EtcdConfig",
    "EventType",
    "Header",
    "KeyLike",
    "KeyValue",
    "LeaseInfo",
    "Member",
    "Op",
    "Page",
    "PermType",
    "Permission",
    "PutResult",
    "RangeResult",
    "Status",
    "TLSConfig",
    "TxnBatcher",
    "TxnResult",
    "Watch",
    "WatchEvent",
    "key_bytes",
    "parse_endpoints",
    "prefix_end",
    "to_bytes",
    "version_warning",
]
