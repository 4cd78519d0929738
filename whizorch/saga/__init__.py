"""Layer 3: distributed sagas on the coordination primitives (see docs/sagas.md)."""

from whizorch.saga._client import SagaClient, SagaHandle, SagaPage, SagaResult, SagaSummary
from whizorch.saga._definition import App, Retry, Saga, Step, StepContext
from whizorch.saga._fencing import fenced_txn
from whizorch.saga._machine import Settings
from whizorch.saga._middleware import CallNext, Middleware, SagaEvent, Submission
from whizorch.saga._model import SagaRecord, StepState
from whizorch.saga._orchestrator import Orchestrator
from whizorch.saga._router import RegionInfo, Router, Weights
from whizorch.saga._worker import Worker

__all__ = [
    "App",
    "CallNext",
    "Middleware",
    "Orchestrator",
    "RegionInfo",
    "Retry",
    "Router",
    "Saga",
    "SagaClient",
    "SagaEvent",
    "SagaHandle",
    "SagaPage",
    "SagaRecord",
    "SagaResult",
    "SagaSummary",
    "Settings",
    "Step",
    "StepContext",
    "StepState",
    "Submission",
    "Weights",
    "Worker",
    "fenced_txn",
]
