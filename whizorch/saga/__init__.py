"""Layer 3: distributed sagas on the coordination primitives (see docs/sagas.md)."""

from whizorch.saga._client import SagaClient, SagaHandle, SagaPage, SagaResult, SagaSummary
from whizorch.saga._definition import App, Retry, Saga, Step, StepContext
from whizorch.saga._events import (
    ContactRestored,
    EventKind,
    InputQuarantined,
    LeadershipChanged,
    OrchestratorEvent,
    RaftLeaderMoved,
    RegionPreferenceUnmet,
    RegionsHealthy,
    SafeModeEntered,
    SagaAdopted,
    SagaFinished,
    SagaPurged,
    StepFailedOver,
)
from whizorch.saga._fencing import fenced_txn
from whizorch.saga._keys import SAGA_ID, Keys
from whizorch.saga._listing import Listing, Submitted, scan_sagas
from whizorch.saga._machine import Settings
from whizorch.saga._middleware import (
    CallNext,
    LeadershipObserver,
    Middleware,
    MiddlewareContext,
    RoleObserver,
    SagaEvent,
    Submission,
)
from whizorch.saga._model import (
    FINAL_STATUSES,
    STATUSES,
    SagaRecord,
    StepKind,
    StepState,
    SubmissionPayload,
)
from whizorch.saga._orchestrator import Orchestrator
from whizorch.saga._router import RegionInfo, Router, Weights
from whizorch.saga._shards import shard_of
from whizorch.saga._snapshot import read_many
from whizorch.saga._status import (
    latency_doc,
    leader_summary,
    leaders_of,
    live_definitions,
    quarantine_notes,
    summarize_cluster,
    summarize_definitions,
    summarize_regions,
    summarize_shards,
    tasks_by_region,
    workers_by_region,
)
from whizorch.saga._supervise import is_transient
from whizorch.saga._view import capabilities
from whizorch.saga._worker import Worker

__all__ = [
    "FINAL_STATUSES",
    "SAGA_ID",
    "STATUSES",
    "App",
    "CallNext",
    "ContactRestored",
    "EventKind",
    "InputQuarantined",
    "Keys",
    "LeadershipChanged",
    "LeadershipObserver",
    "Listing",
    "Middleware",
    "MiddlewareContext",
    "Orchestrator",
    "OrchestratorEvent",
    "RaftLeaderMoved",
    "RegionInfo",
    "RegionPreferenceUnmet",
    "RegionsHealthy",
    "Retry",
    "RoleObserver",
    "Router",
    "SafeModeEntered",
    "Saga",
    "SagaAdopted",
    "SagaClient",
    "SagaEvent",
    "SagaFinished",
    "SagaHandle",
    "SagaPage",
    "SagaPurged",
    "SagaRecord",
    "SagaResult",
    "SagaSummary",
    "Settings",
    "Step",
    "StepContext",
    "StepFailedOver",
    "StepKind",
    "StepState",
    "Submission",
    "SubmissionPayload",
    "Submitted",
    "Weights",
    "Worker",
    "capabilities",
    "fenced_txn",
    "is_transient",
    "latency_doc",
    "leader_summary",
    "leaders_of",
    "live_definitions",
    "quarantine_notes",
    "read_many",
    "scan_sagas",
    "shard_of",
    "summarize_cluster",
    "summarize_definitions",
    "summarize_regions",
    "summarize_shards",
    "tasks_by_region",
    "workers_by_region",
]
