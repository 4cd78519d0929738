"""Sagas used by the benchmarks (imported by worker and orchestrator processes)."""

from __future__ import annotations

from typing import Any

from whizorch.saga import App, Retry, Saga, StepContext

three = Saga("bench-three-regions")


@three.step(region="eu", retry=Retry(attempts=3, backoff_s=0.01))
async def reserve(ctx: StepContext, cmd: Any) -> Any:
    return None


@three.step(region="us", retry=Retry(attempts=3, backoff_s=0.01))
async def charge(ctx: StepContext, cmd: Any) -> Any:
    return None


@three.step(region="ap", retry=Retry(attempts=3, backoff_s=0.01))
async def ship(ctx: StepContext, cmd: Any) -> Any:
    return None


app = App([three])

# bench_scale.py's sagas: the same 3 steps, each allowed an hour, so the in-flight
# sagas it seeds are still within their deadlines while it measures takeovers
scale = Saga("bench-scale")


@scale.step(region="eu", name="reserve", timeout_s=3600.0)
async def scale_reserve(ctx: StepContext, cmd: Any) -> Any:
    return None


@scale.step(region="us", name="charge", timeout_s=3600.0)
async def scale_charge(ctx: StepContext, cmd: Any) -> Any:
    return None


@scale.step(region="ap", name="ship", timeout_s=3600.0)
async def scale_ship(ctx: StepContext, cmd: Any) -> Any:
    return None


scale_app = App([scale])
