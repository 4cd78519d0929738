"""What goes into the saga state machine and what comes out (``_machine.py``).

Events in (a run's result, a lost claim, a cancel, a change of regions, a timer),
the effects of a transition out (tasks to dispatch and delete, timers, failovers), and
what the machine asks of its surroundings (``Route``, ``Settings``). Plain data.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from whizorch.saga._model import StepKind
from whizorch.saga._spec import SagaSpec, StepSpec

__all__ = [
    "Cancel",
    "ClaimLost",
    "Dispatch",
    "Event",
    "RegionsChanged",
    "Result",
    "Route",
    "Settings",
    "Timer",
    "TimerReason",
    "Transition",
    "WaitFor",
]

TimerReason = Literal["retry", "deadline", "no_region"]
"""Why a saga timer fires: a retry is due, a run's deadline passed, no region (or no
worker with the saga's definition) came."""
WaitFor = Literal["region", "worker"]
"""What a step that cannot be dispatched waits for: a healthy region that is
compliant, or a live worker there that has the saga's definition (its version)."""


# -- events -----------------------------------------------------------------------------


@attrs.frozen
class Result:
    """A worker recorded the outcome of one run."""

    step: int
    kind: StepKind
    attempt: int
    ok: bool
    key: str
    error: str | None = None
    retryable: bool = False
    region: str = ""
    error_type: str | None = None
    traceback: str | None = None


@attrs.frozen
class ClaimLost:
    """A claim vanished without a result: the worker died or lost its lease."""

    step: int
    kind: StepKind
    attempt: int


@attrs.frozen
class Cancel:
    """Someone asked to cancel the saga."""


@attrs.frozen
class RegionsChanged:
    """The set of healthy regions changed."""

    healthy: frozenset[str]


@attrs.frozen
class Timer:
    """A timer set by an earlier transition fired (retry due, or dispatch deadline)."""

    step: int
    kind: StepKind
    attempt: int
    reason: TimerReason


Event = Result | ClaimLost | Cancel | RegionsChanged | Timer


# -- effects ----------------------------------------------------------------------------


@attrs.frozen
class Dispatch:
    """Put a task for (step, kind, attempt) in ``region``."""

    step: int
    kind: StepKind
    attempt: int
    region: str


@attrs.define
class Transition:
    """What the orchestrator must write (atomically) and schedule."""

    changed: bool = False
    dispatch: list[Dispatch] = attrs.Factory(list)
    delete_tasks: list[tuple[str, int]] = attrs.Factory(list)
    """(region, step) task keys to delete."""
    timers: list[tuple[float, Timer]] = attrs.Factory(list)
    failovers: list[dict[str, Any]] = attrs.Factory(list)
    unmet: list[dict[str, Any]] = attrs.Factory(list)
    """Steps dispatched away from the region they prefer (``step.region``): where they
    went and why the preferred region could not take them."""


class Route:
    """Routing decisions the machine needs (implemented by the Router)."""

    def pick(self, step: StepSpec, *, exclude: frozenset[str] = frozenset()) -> str | None:  # pragma: no cover
        raise NotImplementedError

    def failover(self, step: StepSpec, *, failed: str) -> str | None:  # pragma: no cover
        raise NotImplementedError

    def healthy(self, region: str) -> bool:  # pragma: no cover
        raise NotImplementedError

    def why_not(self, step: StepSpec) -> tuple[WaitFor, str]:
        """Why no region can take ``step`` now (after ``pick`` found none)."""
        return "region", "no healthy region can run this step (compliance/health)"

    def why_elsewhere(self, step: StepSpec) -> str:
        """Why the region ``step`` prefers (``step.region``) cannot take it now."""
        return f"region {step.region!r} cannot run this step now"


@attrs.frozen(kw_only=True)
class Settings:
    """Timing knobs and limits of the machine (deployment-wide)."""

    dispatch_grace_s: float = 10.0
    """Extra time past a step's timeout before a run with no result counts as failed."""
    no_region_timeout_s: float = 30.0
    """How long a step waits for a healthy, compliant region before failing."""
    no_worker_timeout_s: float = 600.0
    """How long a step waits for a live worker that has its saga's definition (the
    version the saga is pinned to) before the saga fails naming it: long enough for a
    rolling deploy to bring such workers up."""
    max_failovers: int | None = None
    """Deployment-wide cap on region failovers per saga (the lower of this and the
    saga type's own ``max_failovers`` applies); None: the saga type's alone."""

    def failover_limit(self, saga: SagaSpec) -> int:
        """How many failovers a saga of this type may have."""
        if self.max_failovers is None:
            return saga.max_failovers
        return min(saga.max_failovers, self.max_failovers)
