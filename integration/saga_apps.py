"""Sagas for the saga integration tests, and for the worker/orchestrator processes they
start (``python -m whizorch worker --app saga_apps:app ...``).

Every handler appends JSON lines to ``<dir>/runs.jsonl``: one when a run starts and
one when it ends (``ok``, ``fail`` or ``cancelled``), with the saga id, step, kind
(``run``/``compensate``), attempt, region, worker, pid, idempotency key and the wall
clock. Lines are written with one ``O_APPEND`` write each, so several processes can
share the file. ``dir`` comes from the saga input (``"dir"``) or ``$SAGA_APPS_DIR``.

The saga input steers each step by name::

    {"dir": "/tmp/x",
     "fail": {"b": 2},               b's run raises while ctx.attempt <= 2
     "error": {"b": "ValueError"},   ... this exception type (default RuntimeError)
     "comp_fail": {"b": 2},          b's compensation raises while its attempt <= 2
     "hold": {"b": 1},               b waits for release(dir, saga_id, "b") while attempt <= 1
     "hold_in": {"c": "eu"},         ... only when running in this region
     "sleep": {"b": 0.3}}            b takes this long (every attempt)

Nothing here knows about pytest; the module imports only whizorch's public saga API.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from whizorch.saga import App, Retry, Saga, StepContext

__all__ = [
    "DIR_ENV",
    "app",
    "app_both",
    "app_v1",
    "app_v2",
    "far",
    "geo",
    "intervals",
    "leader_app",
    "order_v1",
    "order_v2",
    "orphan",
    "overlaps",
    "policy",
    "read_runs",
    "release",
    "trip",
]

DIR_ENV = "SAGA_APPS_DIR"
RUNS = "runs.jsonl"
RELEASE_ALL = "release-all"

_ERRORS: dict[str, type[Exception]] = {
    "RuntimeError": RuntimeError,
    "ValueError": ValueError,
    "KeyError": KeyError,
    "ConnectionError": ConnectionError,
}


# -- recording -------------------------------------------------------------------------


def _dir(value: Any) -> str | None:
    if isinstance(value, dict) and value.get("dir"):
        return str(value["dir"])
    return os.environ.get(DIR_ENV) or None


def _record(value: Any, ctx: StepContext, phase: str, **extra: Any) -> None:
    where = _dir(value)
    if where is None:
        return
    line = {
        "t": time.time(),
        "phase": phase,
        "saga_id": ctx.saga_id,
        "saga": ctx.saga,
        "version": ctx.version,
        "step": ctx.step,
        "index": ctx.step_index,
        "kind": "compensate" if ctx.compensating else "run",
        "attempt": ctx.attempt,
        "region": ctx.region,
        "worker": ctx.worker,
        "pid": os.getpid(),
        "key": ctx.idempotency_key,
        "txid": ctx.transaction_id,
        **extra,
    }
    fd = os.open(os.path.join(where, RUNS), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


def read_runs(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every line the handlers recorded in ``directory``, in the order written."""
    path = Path(directory) / RUNS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def release(directory: str | os.PathLike[str], saga_id: str | None = None, step: str | None = None) -> None:
    """Let a held step go on (every held step when ``saga_id`` is None)."""
    name = RELEASE_ALL if saga_id is None else f"release-{saga_id}-{step}"
    (Path(directory) / name).touch()


def intervals(runs: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[tuple[float, float, int]]]:
    """(saga, step, kind) -> [(start, end, attempt)]; a run with no end (its process was
    killed) lasts until +inf."""
    starts: dict[tuple[str, str, str, int, int], float] = {}
    out: dict[tuple[str, str, str], list[tuple[float, float, int]]] = defaultdict(list)
    for r in runs:
        run_id = (r["saga_id"], r["step"], r["kind"], r["attempt"], r["pid"])
        if r["phase"] == "start":
            starts[run_id] = r["t"]
        elif run_id in starts:
            out[run_id[:3]].append((starts.pop(run_id), r["t"], r["attempt"]))
    for run_id, t in starts.items():
        out[run_id[:3]].append((t, float("inf"), run_id[3]))
    return out


def overlaps(runs: list[dict[str, Any]]) -> list[tuple[tuple[str, str, str], tuple[float, float, int], tuple[float, float, int]]]:
    """Pairs of runs of the same saga step (and kind) that ran at the same time."""
    found = []
    for what, spans in intervals(runs).items():
        spans.sort()
        for before, after in zip(spans, spans[1:], strict=False):
            if after[0] < before[1]:
                found.append((what, before, after))
    return found


# -- the handlers ------------------------------------------------------------------------


def _plan(value: Any, field: str, step: str) -> Any:
    if isinstance(value, dict) and isinstance(value.get(field), dict):
        return value[field].get(step)
    return None


async def _hold(value: Any, ctx: StepContext) -> None:
    limit = _plan(value, "hold", ctx.step)
    region = _plan(value, "hold_in", ctx.step)
    where = _dir(value)
    if not limit or ctx.attempt > int(limit) or where is None or (region and region != ctx.region):
        return
    _record(value, ctx, "held")
    gate = Path(where) / f"release-{ctx.saga_id}-{ctx.step}"
    every = Path(where) / RELEASE_ALL
    while not gate.exists() and not every.exists():
        await asyncio.sleep(0.02)  # ok: a step simulating work that waits for the test


async def work(ctx: StepContext, value: Any) -> dict[str, Any]:
    """A step: record, maybe hold/sleep/fail as the input says, return where it ran."""
    _record(value, ctx, "start")
    phase, error = "cancelled", None
    try:
        await _hold(value, ctx)
        delay = _plan(value, "sleep", ctx.step)
        if delay:
            await asyncio.sleep(float(delay))  # ok: a step simulating work
        fails = _plan(value, "fail", ctx.step)
        if fails and ctx.attempt <= int(fails):
            kind = _ERRORS[_plan(value, "error", ctx.step) or "RuntimeError"]
            error = f"{ctx.step} failed on attempt {ctx.attempt}"
            phase = "fail"
            raise kind(error)
        phase = "ok"
        return {"step": ctx.step, "region": ctx.region, "attempt": ctx.attempt, "key": ctx.idempotency_key}
    finally:
        _record(value, ctx, "end", outcome=phase, error=error)


async def undo(ctx: StepContext, value: Any) -> dict[str, Any]:
    """A compensation: record, maybe fail as the input says (``comp_fail``)."""
    _record(value, ctx, "start")
    phase = "cancelled"
    try:
        fails = _plan(value, "comp_fail", ctx.step)
        if fails and ctx.attempt <= int(fails):
            phase = "fail"
            raise RuntimeError(f"compensation of {ctx.step} failed on attempt {ctx.attempt}")
        phase = "ok"
        return {"undone": ctx.step}
    finally:
        _record(value, ctx, "end", outcome=phase)


# -- the sagas ---------------------------------------------------------------------------

STEP_RETRY = Retry(attempts=3, backoff_s=0.05, max_delay_s=0.2)
COMP_ATTEMPTS = {"a": 2, "b": 3, "c": 4, "d": 2}
"""Each compensation's own retry policy: total runs before it gives up."""


def _four_steps(name: str, *, region: str | None = None, timeout_s: float = 30.0) -> Saga:
    saga = Saga(name)
    for step_name, attempts in COMP_ATTEMPTS.items():
        step = saga.step(name=step_name, retry=STEP_RETRY, region=region, timeout_s=timeout_s)(work)
        step.compensate(retry=Retry(attempts=attempts, backoff_s=0.05, max_delay_s=0.2))(undo)
    return saga


trip = _four_steps("trip")
"""Four steps a-d, each with a compensation retried by its own policy (COMP_ATTEMPTS)."""

geo = _four_steps("geo", region="eu")
"""trip with every step's data in region "eu" (the router prefers it)."""

policy = Saga("policy")
"""Retry policies: ``strict`` gives up on ValueError, ``picky`` retries only
ConnectionError, ``slow`` has a 0.5 s timeout."""
policy.step(name="first", retry=STEP_RETRY)(work).compensate(retry=STEP_RETRY)(undo)
policy.step(name="strict", retry=Retry(attempts=4, backoff_s=0.05, max_delay_s=0.2, give_up_on=(ValueError,)))(work)
policy.step(name="picky", retry=Retry(attempts=4, backoff_s=0.05, max_delay_s=0.2, retry_on=(ConnectionError,)))(work)
policy.step(name="slow", timeout_s=0.5, retry=Retry(attempts=3, backoff_s=0.05, max_delay_s=0.2))(work)

orphan = Saga("orphan")
"""Known to the leader (``leader_app``) but to no worker (``app``)."""
orphan.step(name="a", retry=STEP_RETRY)(work)

far = Saga("far")
"""One step whose data is in region "ap" (a region the tests' deployments may lack):
in no App here, so that configurations without ap accept the others."""
far.step(name="a", region="ap", retry=STEP_RETRY)(work)


def _order(version: str, steps: str) -> Saga:
    saga = Saga("order", version=version)
    for step_name in steps:
        saga.step(name=step_name, retry=STEP_RETRY)(work).compensate(retry=STEP_RETRY)(undo)
    return saga


order_v1 = _order("1", "abc")
"""Version 1 of a saga type: steps a, b, c."""
order_v2 = _order("2", "ac")
"""Version 2 of the same type: b is gone (a changed definition, so a new version)."""

app = App([trip, geo, policy])
"""What workers (and, in process tests, orchestrators) load."""

leader_app = App([trip, geo, policy, orphan])
"""An orchestrator's app with a saga type no worker knows."""

app_v1 = App([order_v1])
"""A deployment's code before a change of ``order`` (rolling deploy: the start)."""
app_both = App([order_v1, order_v2])
"""The code that makes version 2 current and still runs version 1 (the rolling step)."""
app_v2 = App([order_v2])
"""The code once version 1 has drained."""


# -- a user middleware -------------------------------------------------------------------

MIDDLEWARE_LOG = "middleware.jsonl"


async def audit(ctx: Any, call_next: Any) -> Any:
    """A user's middleware (``--middleware saga_apps:audit``): logs every step call and
    saga event it wraps to ``$SAGA_APPS_DIR/middleware.jsonl``, with the outcome."""
    where = os.environ.get(DIR_ENV)
    kind = "step" if isinstance(ctx, StepContext) else type(ctx).__name__
    outcome = "error"
    try:
        result = await call_next()
        outcome = "ok"
        return result
    finally:
        if where:
            line = {"kind": kind, "saga_id": ctx.saga_id, "pid": os.getpid(), "outcome": outcome,
                    "step": getattr(ctx, "step", None), "event": getattr(ctx, "event", None)}
            fd = os.open(os.path.join(where, MIDDLEWARE_LOG), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (json.dumps(line) + "\n").encode())
            finally:
                os.close(fd)
