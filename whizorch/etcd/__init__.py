"""Layer 1: the thin asyncio etcd v3 adapter (grpc.aio). Knows nothing of sagas."""

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
    KeyValue,
    Op,
    PutResult,
    RangeResult,
    TxnResult,
    WatchEvent,
    prefix_end,
)
from whizorch.etcd._versions import version_warning
from whizorch.etcd._watch import Watch

__all__ = [
    "AuthConfig",
    "CallObserver",
    "CallTiming",
    "Compare",
    "DeleteResult",
    "EtcdClient",
    "EtcdConfig",
    "EventType",
    "Header",
    "KeyValue",
    "LeaseInfo",
    "Member",
    "Op",
    "Page",
    "PutResult",
    "RangeResult",
    "Status",
    "TLSConfig",
    "TxnResult",
    "Watch",
    "WatchEvent",
    "parse_endpoints",
    "prefix_end",
    "version_warning",
]
