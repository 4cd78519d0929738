"""What every shard leader of one orchestrator process shares: the process's view.

One :class:`LeaderEnv` per orchestrator: its etcd client and key layout, the saga
definitions, the router and the live workers (one region watch per process feeds
them), the machine's settings, middleware and event callback, the quarantine, and the
split-brain gate (safe mode pauses every shard's writes at once). A shard leader reads
it and never changes it; what one term of one shard owns lives in the term
(``_term.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from whizorch.etcd import EtcdClient
from whizorch.saga import _machine as m
from whizorch.saga._contact import ContactGate
from whizorch.saga._definitions import Definitions
from whizorch.saga._events import OrchestratorEvent
from whizorch.saga._keys import Keys
from whizorch.saga._middleware import Middleware
from whizorch.saga._quarantine import Quarantine
from whizorch.saga._router import Router
from whizorch.saga._supervise import BackgroundTasks
from whizorch.saga._view import Workers

__all__ = ["LeaderEnv"]


@attrs.define(kw_only=True)
class LeaderEnv:
    """The orchestrator process's shared view (see module docs)."""

    client: EtcdClient
    keys: Keys
    node_id: str
    shards: int
    """The namespace's shard count (``<ns>/meta``)."""
    definitions: Definitions
    router: Router
    workers: Workers
    """The live workers by region, kept by the process's region watch."""
    settings: m.Settings
    middleware: Sequence[Middleware]
    emit: Callable[[OrchestratorEvent], None]
    quarantine: Quarantine
    contact: ContactGate
    retention_s: float
    background: BackgroundTasks
