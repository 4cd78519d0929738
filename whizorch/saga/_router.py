"""The global router: scores healthy regions for a step.

Default score (the spec's weights): ``+50`` if the region holds the step's data,
``- latency_ms / 10`` (from the data's region, else from the orchestrator's home; a
route from the home region uses the round trip the leader measured when it has one,
see ``_latency.py``, else the configured matrix),
``- cost * 10``, ``- load * 20``; a region lacking a compliance tag the step requires
is disqualified. Pass ``scorer=`` to replace the formula.

Failover (a step's region died): ``"closest"`` (default) moves it to the healthy,
compliant region with the lowest configured latency from the dead one (regions with no
configured latency come last, by name); ``"score"`` re-routes by score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from whizorch.errors import ConfigError
from whizorch.saga._machine import Route, WaitFor
from whizorch.saga._spec import StepSpec

__all__ = ["RegionInfo", "Router", "Weights"]


@attrs.frozen(kw_only=True)
class RegionInfo:
    """A healthy region as its live workers describe it."""

    name: str
    compliance: frozenset[str] = frozenset()
    cost: float = 0.0
    load: float = 0.0
    """Busy fraction of the region's worker capacity, 0..1."""
    workers: int = 1
    serves: frozenset[tuple[str, str]] | None = None
    """The (saga type, version) pairs its live workers can run; None: anything (a
    worker from before versions advertises no list)."""

    def can_run(self, definition: tuple[str, str]) -> bool:
        """A live worker here has this saga definition."""
        return self.serves is None or definition in self.serves


@attrs.frozen(kw_only=True)
class Weights:
    """Weights of the default score."""

    locality: float = 50.0
    latency_per_ms: float = 0.1
    cost: float = 10.0
    load: float = 20.0


Scorer = Callable[[StepSpec, RegionInfo, "Router"], "float | None"]


def _latency_table(latency_ms: Mapping[Any, Any]) -> dict[tuple[str, str], float]:
    table: dict[tuple[str, str], float] = {}
    for key, value in latency_ms.items():
        if isinstance(key, tuple) and len(key) == 2:
            pairs = [(key, value)]
        elif isinstance(key, str) and isinstance(value, Mapping):
            pairs = [((key, dst), ms) for dst, ms in value.items()]
        else:
            raise ConfigError("latency_ms maps (src, dst) or src -> {dst: ms}", field="latency_ms", value=key)
        for (src, dst), ms in pairs:
            if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not ms >= 0:  # NaN too
                raise ConfigError("a latency must be a number of ms >= 0", field=f"latency_ms[{src}][{dst}]", value=ms)
            table[(src, dst)] = float(ms)
            table.setdefault((dst, src), float(ms))
    return table


class Router(Route):
    """Picks a region for each step among the healthy ones."""

    def __init__(
        self,
        *,
        latency_ms: Mapping[Any, Any] | None = None,
        weights: Weights = Weights(),
        scorer: Scorer | None = None,
        home_region: str | None = None,
        failover_policy: str = "closest",
        regions: frozenset[str] | set[str] | tuple[str, ...] = (),
    ) -> None:
        if failover_policy not in ("closest", "score"):
            raise ConfigError("failover_policy must be 'closest' or 'score'", field="failover_policy", value=failover_policy)
        self.latency = _latency_table(latency_ms or {})
        self.weights = weights
        self.scorer = scorer
        self.home_region = home_region
        self.failover_policy = failover_policy
        self.configured = frozenset(regions)
        """The regions the configuration names (``[regions.<name>]``)."""
        self.regions: dict[str, RegionInfo] = {}
        self.measured_ms: dict[str, float] = {}
        """Round trips from the home region to each region, as the leader measured
        them (an EWMA); preferred over the configured matrix for routes from home."""

    def update(self, regions: Mapping[str, RegionInfo]) -> None:
        """Replace the view of healthy regions."""
        self.regions = dict(regions)

    def latency_ms(self, src: str | None, dst: str) -> float:
        """Latency between two regions: measured from the home region when the leader
        has a measurement, else configured (0 for the same region or unknown)."""
        if src is None or src == dst:
            return 0.0
        if src == self.home_region and dst in self.measured_ms:
            return self.measured_ms[dst]
        return self.latency.get((src, dst), 0.0)

    def healthy(self, region: str) -> bool:
        return region in self.regions

    def eligible(self, step: StepSpec, region: RegionInfo) -> bool:
        """The region carries every compliance tag the step requires, and a live
        worker there has the step's saga definition (its version)."""
        return step.compliance <= region.compliance and region.can_run(step.definition)

    def why_not(self, step: StepSpec) -> tuple[WaitFor, str]:
        """Why no healthy region is eligible for ``step``."""
        compliant = [r for r in self.regions.values() if step.compliance <= r.compliance]
        if not compliant:
            if not self.regions:
                return "region", "no healthy region (no live worker in any region)"
            return "region", (
                f"no healthy region has compliance {sorted(step.compliance)} (healthy: {sorted(self.regions)})"
            )
        served = sorted({f"{n} {v}" for r in compliant for n, v in (r.serves or ()) if n == step.saga})
        return "worker", (
            f"no live worker can run saga {step.saga!r} version {step.version!r}"
            + (f" (live workers have: {', '.join(served)})" if served else f" (no live worker has saga {step.saga!r})")
        )

    def why_elsewhere(self, step: StepSpec) -> str:
        """Why the region ``step`` prefers cannot take it now."""
        wanted = step.region or ""
        info = self.regions.get(wanted)
        if info is None:
            if wanted not in self.known_regions():
                return f"region {wanted!r} is not a known region (configured: {sorted(self.known_regions())})"
            return f"region {wanted!r} has no live worker"
        if not step.compliance <= info.compliance:
            return f"region {wanted!r} lacks compliance {sorted(step.compliance - info.compliance)}"
        if not info.can_run(step.definition):
            return f"no live worker in region {wanted!r} can run saga {step.saga!r} version {step.version!r}"
        return f"region {wanted!r} scored lower than the region chosen"

    def known_regions(self) -> frozenset[str]:
        """Regions the configuration names (its latency matrix) or that have workers now."""
        return frozenset({a for a, _ in self.latency} | set(self.regions) | self.configured)

    def score(self, step: StepSpec, region: RegionInfo) -> float | None:
        """The region's score for ``step``; None when disqualified."""
        if not self.eligible(step, region):
            return None
        if self.scorer is not None:
            return self.scorer(step, region, self)
        w = self.weights
        origin = step.region or self.home_region
        s = 0.0
        if step.region is not None and step.region == region.name:
            s += w.locality
        s -= self.latency_ms(origin, region.name) * w.latency_per_ms
        s -= region.cost * w.cost
        s -= region.load * w.load
        return s

    def ranked(self, step: StepSpec, *, exclude: frozenset[str] = frozenset()) -> list[tuple[float, str]]:
        """Eligible healthy regions, best first (ties broken by name)."""
        out = []
        for name, info in self.regions.items():
            if name in exclude:
                continue
            sc = self.score(step, info)
            if sc is not None:
                out.append((sc, name))
        out.sort(key=lambda p: (-p[0], p[1]))
        return out

    def pick(self, step: StepSpec, *, exclude: frozenset[str] = frozenset()) -> str | None:
        ranked = self.ranked(step, exclude=exclude)
        return ranked[0][1] if ranked else None

    def failover(self, step: StepSpec, *, failed: str) -> str | None:
        candidates = [
            name for name, info in self.regions.items() if name != failed and self.eligible(step, info)
        ]
        if not candidates:
            return None
        if self.failover_policy == "score":
            return self.pick(step, exclude=frozenset({failed}))
        # a pair with no configured latency is not "0 ms away": rank it after known ones
        return min(candidates, key=lambda r: (self.latency.get((failed, r), math.inf), r))
