"""The mistakes a new user makes, and what whizorch says about them, on real etcd.

An orchestrator and a worker per region run in this event loop (their App is this
module's ``app``); the command-line views run as child processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest

from whizorch import EtcdClient
from whizorch.errors import ConfigError, SagaFailedError, SagaIdConflictError
from whizorch.saga import App, Orchestrator, Retry, Saga, SagaClient, StepContext, Worker
from whizorch.saga._outcome import TRACEBACK_LIMIT

order = Saga("order")


@order.step(region="eu", retry=Retry(attempts=2, backoff_s=0.01))
async def reserve(ctx: StepContext, cmd: dict[str, Any]) -> dict[str, Any]:
    return {"reserved": cmd["sku"]}  # KeyError when the input has no sku


@order.step(region="us")
async def notify(ctx: StepContext, cmd: dict[str, Any]) -> dict[str, Any]:
    return {"sent": True}  # no compensation: nothing to undo


@order.step(region="eu", retry=Retry(attempts=1))
async def ship(ctx: StepContext, cmd: dict[str, Any]) -> None:
    if cmd.get("country") == "mars":
        raise ValueError("no carrier ships to 'mars' " + "x" * 5000)


@reserve.compensate
async def release(ctx: StepContext, cmd: dict[str, Any]) -> None:
    return None


app = App([order])


@attrs.frozen
class Deployment:
    endpoints: list[str]
    ns: str
    sagas: SagaClient


@pytest.fixture
async def deployment(etcd_endpoints: list[str]) -> AsyncIterator[Deployment]:
    ns = f"mistakes-{uuid.uuid4().hex[:8]}"
    async with EtcdClient(etcd_endpoints, timeout_s=3.0) as client:
        try:
            async with contextlib.AsyncExitStack() as stack:
                for region in ("eu", "us"):
                    await stack.enter_async_context(
                        Worker(client, app, region=region, namespace=ns, lease_ttl_s=2, drain_timeout_s=1.0)
                    )
                orch = await stack.enter_async_context(Orchestrator(client, app, namespace=ns, lease_ttl_s=2))
                await orch.wait_leader(10)
                sagas = await stack.enter_async_context(SagaClient(client, namespace=ns))
                yield Deployment(list(etcd_endpoints), ns, sagas)
        finally:
            await client.delete(ns + "/", prefix=True)


async def cli(d: Deployment, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``python -m whizorch ARGS --etcd E --namespace NS`` with stdout a pipe: status, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "whizorch", *args, "--etcd", ",".join(d.endpoints), "--namespace", d.ns,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env if env is not None else {k: v for k, v in os.environ.items() if k != "COLUMNS"},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


GOOD = {"sku": "book", "country": "fr", "lines": [1, 2]}


async def test_the_same_id_with_the_same_input_is_the_same_saga(deployment: Deployment) -> None:
    """Submitting an id again with an equal input (keys in another order) returns the first saga's handle."""
    first = await deployment.sagas.submit(order, GOOD, saga_id="same-1")
    again = await deployment.sagas.submit(order, {"lines": [1, 2], "country": "fr", "sku": "book"}, saga_id="same-1")
    assert again.txid == first.txid
    assert (await again.result(timeout_s=30)).ok


async def test_the_same_id_with_another_input_is_a_clear_conflict(deployment: Deployment) -> None:
    """Submitting an id again with a different input raises SagaIdConflictError naming the id and the first txid; another type too."""
    first = await deployment.sagas.submit(order, GOOD, saga_id="conflict-1")
    with pytest.raises(SagaIdConflictError) as info:
        await deployment.sagas.submit(order, {**GOOD, "sku": "pen"}, saga_id="conflict-1")
    exc = info.value
    assert isinstance(exc, ConfigError) and isinstance(exc, ValueError)
    assert (exc.saga_id, exc.saga, exc.existing, exc.txid) == ("conflict-1", "order", "order", first.txid)
    assert str(exc) == (
        f"saga id 'conflict-1' was submitted before with a different input (txid {first.txid}): submitting an id "
        "again returns the existing saga only with the same input; use another id for a new saga"
    )
    with pytest.raises(SagaIdConflictError, match="is already used by a 'order' saga"):
        await deployment.sagas.submit("invoice", GOOD, saga_id="conflict-1")
    assert (await first.result(timeout_s=30)).outputs["reserve"] == {"reserved": "book"}


async def test_saga_failed_error_is_one_readable_line(deployment: Deployment) -> None:
    """SagaFailedError's message is one line naming the saga, how it ended and why, bounded; the outcome rides on .result."""
    with pytest.raises(SagaFailedError) as info:
        await deployment.sagas.execute(order, {**GOOD, "country": "mars"}, saga_id="failed-1", timeout_s=30)
    exc = info.value
    text = str(exc)
    assert "\n" not in text and len(text) < 400, text
    assert text.startswith("saga 'failed-1' (order) ended compensated: step 'ship' failed: ValueError: no carrier")
    assert text.endswith("...") and "record" not in text and "SagaResult" not in text
    assert exc.result.status == "compensated" and exc.status == "compensated" and exc.saga_id == "failed-1"
    assert exc.error.startswith("step 'ship' failed: ValueError")


async def test_a_handler_exception_is_logged_with_its_traceback_and_kept(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker logs a handler's exception with its traceback; the record keeps its type and a bounded traceback from the user's code on."""
    caplog.set_level(logging.WARNING, logger="whizorch.saga.worker")
    result = await deployment.sagas.execute(order, {"country": "fr"}, saga_id="keyerror-1", timeout_s=30,
                                            raise_on_failure=False)  # fmt: skip
    assert result.status == "compensated" and result.error == "step 'reserve' failed: KeyError: 'sku'"
    step = result.record.steps[0]
    assert (step.error, step.error_type) == ("KeyError: 'sku'", "KeyError")
    assert step.traceback is not None and len(step.traceback) <= TRACEBACK_LIMIT
    assert step.traceback.startswith("Traceback (most recent call last):\n")
    assert f'{__file__}", line' in step.traceback and "in reserve" in step.traceback
    assert step.traceback.rstrip().endswith("KeyError: 'sku'")
    assert "whizorch/saga" not in step.traceback  # the engine's frames that called the handler are left out
    logged = [r for r in caplog.records if "keyerror-1" in r.getMessage()]
    assert len(logged) == 2  # both runs
    assert "step 'reserve' run #1 raised KeyError: 'sku' (retryable)" in logged[0].getMessage()
    assert "in reserve" in logged[0].getMessage() and "Traceback" in logged[0].getMessage()


async def test_sagas_show_prints_input_outputs_tracebacks_and_the_true_compensation(deployment: Deployment) -> None:
    """sagas show: the input, each step's output, the failed step's traceback, and a step without compensation not called compensated; --json too."""
    await deployment.sagas.execute(order, {**GOOD, "country": "mars"}, saga_id="show-1", timeout_s=30,
                                   raise_on_failure=False)  # fmt: skip
    code, out, err = await cli(deployment, "sagas", "show", "show-1", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["input"] == {**GOOD, "country": "mars"}
    assert doc["outputs"] == {"reserve": {"reserved": "book"}, "notify": {"sent": True}}
    reserve_, notify_, ship_ = doc["steps"]
    assert (reserve_["state"], reserve_["compensation"]) == ("compensated", "compensated")
    assert (notify_["state"], notify_["compensation"]) == ("compensated", "none")  # stored state; the truth beside it
    assert ship_["error_type"] == "ValueError" and "in ship" in ship_["traceback"]
    code, out, err = await cli(deployment, "sagas", "show", "show-1")
    assert code == 0, err
    assert 'input: {"sku": "book", "country": "mars", "lines": [1, 2]}' in out
    assert '{"reserved": "book"}' in out and '{"sent": true}' in out
    assert "done, not compensated" in out and "none: the step has no compensation, nothing was undone" in out
    assert "traceback of step 'ship' (run, its last failure):" in out and "in ship" in out


async def test_piped_tables_are_not_squeezed(deployment: Deployment) -> None:
    """`sagas list` piped (stdout not a terminal, no COLUMNS): every header whole, every row on one line."""
    await deployment.sagas.execute(order, GOOD, saga_id="a-rather-long-saga-id-for-the-table-0001", timeout_s=30)
    code, out, err = await cli(deployment, "sagas", "list")
    assert code == 0, err
    header = next(line for line in out.splitlines() if " status " in line)
    for col in ("id", "type", "status", "txid", "step", "regions", "failovers", "age", "duration", "error"):
        assert f" {col} " in header, header
    assert any("a-rather-long-saga-id-for-the-table-0001" in line and "completed" in line for line in out.splitlines())
