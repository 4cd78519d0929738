"""Layer 2: coordination primitives on etcd (sessions, elections, locks, IDs, state)."""

from whizorch.coord._consensus import has_quorum, propose_value
from whizorch.coord._election import Election, LeaderInfo
from whizorch.coord._ids import GlobalIds
from whizorch.coord._lock import Lock
from whizorch.coord._queue import Fence
from whizorch.coord._session import LeaseTiming, Session
from whizorch.coord._state import Versioned, VersionedStore

__all__ = [
    "Election",
    "Fence",
    "GlobalIds",
    "LeaderInfo",
    "LeaseTiming",
    "Lock",
    "Session",
    "Versioned",
    "VersionedStore",
    "has_quorum",
    "propose_value",
]
