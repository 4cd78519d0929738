"""The saga of the WAN benchmark (``--app bench_wan_apps:app`` in worker and orchestrator
processes placed in the lab's regions).

``wan``: three no-op steps pinned to eu, us and ap. Each handler prints one JSON line
on its worker's stdout when it starts (``{"event": "step_started", ...}`` with the wall
clock: every process of the lab shares the host's clock) and returns its region and
start time, so the benchmark can tell where and when each run began. Input
``{"hold": "us"}`` makes the step running in ``us`` wait a minute: the benchmark kills
that region's workers while it waits and times how long until the step runs elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from whizorch.saga import App, Retry, Saga, StepContext

wan = Saga("wan-three-regions")

_RETRY = Retry(attempts=3, backoff_s=0.01)


async def _step(ctx: StepContext, cmd: Any) -> dict[str, Any]:
    started = time.time()
    line = {
        "event": "step_started", "saga_id": ctx.saga_id, "step": ctx.step_index, "region": ctx.region,
        "attempt": ctx.attempt, "t": started,
    }
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()
    if isinstance(cmd, dict) and cmd.get("hold") == ctx.region and not ctx.compensating:
        await asyncio.sleep(60)  # ok: held until the benchmark kills this region's workers
    return {"region": ctx.region, "t": started}


@wan.step(region="eu", retry=_RETRY)
async def reserve(ctx: StepContext, cmd: Any) -> dict[str, Any]:
    return await _step(ctx, cmd)


@wan.step(region="us", retry=_RETRY)
async def charge(ctx: StepContext, cmd: Any) -> dict[str, Any]:
    return await _step(ctx, cmd)


@wan.step(region="ap", retry=_RETRY)
async def ship(ctx: StepContext, cmd: Any) -> dict[str, Any]:
    return await _step(ctx, cmd)


app = App([wan])
