"""Sagas for the single-fault process tests (``--app fault_apps:app``).

* ``fenced``: one step, ``effect``. Attempt 1 waits for a release file (the test
  pauses its worker meanwhile); the line after the wait records ``resumed``. In a
  ``finally`` (so it runs even when the worker stops the handler; shielded, as a
  clean-up that must finish) the step makes its effect: a txn on ``$FAULT_APPS_ETCD`` guarded by the run's claim
  (``create_revision(ctx.fence_key) == ctx.fence_token``), and records whether etcd
  committed it. A stale run's late effect is refused by that compare.
* ``bulky``: 30 steps, each returning a string of ``size`` bytes (input ``{"size": N}``).

Lines go to ``$SAGA_APPS_DIR/fault.jsonl`` (one ``O_APPEND`` write each).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from whizorch import EtcdClient, Op
from whizorch.saga import App, Retry, Saga, StepContext

__all__ = ["EFFECT_KEY", "BrokenApp", "app", "broken_app", "bulky", "close_client", "fenced", "read_lines"]

LOG = "fault.jsonl"
EFFECT_KEY = "fault-effects/"
_client: EtcdClient | None = None


def _log(**line: Any) -> None:
    where = os.environ["SAGA_APPS_DIR"]
    fd = os.open(os.path.join(where, LOG), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps({"t": time.time(), "pid": os.getpid(), **line}) + "\n").encode())
    finally:
        os.close(fd)


async def close_client() -> None:
    """Close the handlers' etcd client (a test that ran them in its own process)."""
    global _client
    client, _client = _client, None
    if client is not None:
        await client.close()


def read_lines(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every line the handlers wrote, in order."""
    path = Path(directory) / LOG
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


async def _etcd() -> EtcdClient:
    global _client
    if _client is None:
        _client = await EtcdClient(os.environ["FAULT_APPS_ETCD"], timeout_s=2.0).open()
    return _client


async def effect(ctx: StepContext, value: Any) -> dict[str, Any]:
    """Hold on attempt 1; make a fenced effect in ``finally`` and log what etcd said."""
    _log(event="start", saga_id=ctx.saga_id, attempt=ctx.attempt, token=ctx.fence_token, worker=ctx.worker)
    gate = Path(os.environ["SAGA_APPS_DIR"]) / f"release-{ctx.saga_id}"
    try:
        while ctx.attempt == 1 and not gate.exists():
            await asyncio.sleep(0.02)  # ok: a step simulating work that waits for the test
        _log(event="resumed", saga_id=ctx.saga_id, attempt=ctx.attempt, token=ctx.fence_token)
        return {"attempt": ctx.attempt, "token": ctx.fence_token}
    finally:
        # shielded: a clean-up that must reach etcd even while the worker cancels the run
        await asyncio.shield(_effect(ctx))


async def _effect(ctx: StepContext) -> None:
    client = await _etcd()
    res = await client.txn(
        [ctx.fence.compare()],
        [Op.put(EFFECT_KEY + ctx.saga_id, json.dumps({"attempt": ctx.attempt, "token": ctx.fence_token}))],
    )
    _log(event="effect", saga_id=ctx.saga_id, attempt=ctx.attempt, token=ctx.fence_token, committed=res.succeeded)


fenced = Saga("fenced")
fenced.step(name="effect", retry=Retry(attempts=3, backoff_s=0.05, max_delay_s=0.2))(effect)


async def big(ctx: StepContext, value: Any) -> str:
    """Return ``value["size"]`` bytes; check every earlier output arrived whole."""
    size = int(value["size"])
    for name, out in ctx.outputs.items():
        if out != name * (size // len(name)):
            raise ValueError(f"output of {name} arrived damaged ({len(out)} bytes)")
    if len(ctx.outputs) != ctx.step_index:
        raise ValueError(f"step {ctx.step} saw {len(ctx.outputs)} earlier outputs, not {ctx.step_index}")
    return ctx.step * (size // len(ctx.step))


bulky = Saga("bulky")
for _i in range(30):
    bulky.step(name=f"s{_i:02d}", retry=Retry(attempts=1))(big)

app = App([fenced, bulky])


class BrokenApp(App):
    """An App whose lookup has a bug (for the test that a bug ends the worker)."""

    def get(self, name: str, version: str | None = None) -> Saga | None:
        raise KeyError(f"bug in the app's lookup of {name!r}")


broken_app = BrokenApp([fenced])
