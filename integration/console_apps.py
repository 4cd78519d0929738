"""Sagas for the console's tests (``--app console_apps:app`` in the role processes).

``tour`` runs one step in each region, ``visit_eu`` (eu), ``visit_us`` (us) and
``visit_ap`` (ap), each with a compensation. ``quick`` is one step anywhere. The input
steers them::

    {"dir": "/tmp/x",              where holds wait (default $CONSOLE_APPS_DIR)
     "hold": {"visit_us": "us"},   that step waits for release(dir, saga_id) while it runs in that region
     "fail": "visit_ap"}           that step fails on every attempt (the saga compensates)

A held step writes ``held-<saga id>`` in the directory first, so a test knows it runs.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from whizorch.saga import App, Retry, Saga, StepContext

__all__ = ["DIR_ENV", "LATENCY_MS", "app", "held", "quick", "release", "tour"]

DIR_ENV = "CONSOLE_APPS_DIR"
LATENCY_MS = {"eu": {"us": 80, "ap": 200}, "us": {"eu": 80, "ap": 150}, "ap": {"eu": 200, "us": 150}}
"""The orchestrator's latency matrix: a step leaving us goes to eu first."""

_RETRY = Retry(attempts=3, backoff_s=0.05, max_delay_s=0.2)


def _dir(value: Any) -> Path | None:
    where = value.get("dir") if isinstance(value, dict) else None
    where = where or os.environ.get(DIR_ENV)
    return Path(where) if where else None


def held(directory: Path, saga_id: str) -> bool:
    """Whether a step of the saga is holding now."""
    return (directory / f"held-{saga_id}").exists()


def release(directory: Path, saga_id: str) -> None:
    """Let the saga's held step go on."""
    (directory / f"release-{saga_id}").touch()


async def _step(ctx: StepContext, value: Any) -> dict[str, Any]:
    plan = value if isinstance(value, dict) else {}
    where = _dir(value)
    if not ctx.compensating and where is not None and plan.get("hold", {}).get(ctx.step) == ctx.region:
        (where / f"held-{ctx.saga_id}").touch()
        while not (where / f"release-{ctx.saga_id}").exists():
            await asyncio.sleep(0.02)  # ok: a step holding until the test releases it
    if not ctx.compensating and plan.get("fail") == ctx.step:
        raise RuntimeError(f"{ctx.step} failed as designed (attempt {ctx.attempt})")
    return {"step": ctx.step, "region": ctx.region, "attempt": ctx.attempt, "compensating": ctx.compensating}


tour = Saga("tour")
for _name, _region in (("visit_eu", "eu"), ("visit_us", "us"), ("visit_ap", "ap")):
    tour.step(name=_name, region=_region, retry=_RETRY)(_step).compensate(retry=_RETRY)(_step)

quick = Saga("quick")
quick.step(name="only", retry=_RETRY)(_step)

app = App([tour, quick])
