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
