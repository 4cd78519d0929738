"""``whizorch sagas submit`` / ``cancel`` as subprocesses against real etcd, with an
orchestrator and workers running in this event loop (never a mock)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import saga_apps as apps

from whizorch import EtcdClient
from whizorch.saga import Orchestrator, SagaClient, Worker
from whizorch.testing import eventually_async

pytestmark = pytest.mark.etcd34


class Deployment:
    def __init__(self, endpoints: list[str], ns: str, directory: Path, client: EtcdClient) -> None:
        self.endpoints = endpoints
        self.ns = ns
        self.dir = directory
        self.client = client

    async def cli(self, *args: str) -> tuple[int, str, str]:
        """Run ``whizorch <args> --etcd E --namespace NS``: (exit status, stdout, stderr)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("WHIZORCH_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "whizorch", *args, "--etcd", ",".join(self.endpoints), "--namespace", self.ns,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def deployment(etcd_endpoints: list[str], tmp_path: Path) -> AsyncIterator[Deployment]:
    ns = f"submit-{uuid.uuid4().hex[:8]}"
    async with EtcdClient(etcd_endpoints, timeout_s=3.0) as client:
        async with contextlib.AsyncExitStack() as stack:
            for region in ("eu", "us"):
                await stack.enter_async_context(
                    Worker(client, apps.app, region=region, namespace=ns, lease_ttl_s=2, drain_timeout_s=1.0)
                )
            orch = await stack.enter_async_context(Orchestrator(client, apps.app, namespace=ns, lease_ttl_s=2))
            await orch.wait_leader(10)
            try:
                yield Deployment(etcd_endpoints, ns, tmp_path, client)
            finally:
                apps.release(tmp_path)
        await client.delete(ns + "/", prefix=True)


async def test_submit_and_wait_prints_the_outcome(deployment: Deployment) -> None:
    """submit --wait --json returns the completed outcome; the same --id again is the same saga (same txid)."""
    code, out, err = await deployment.cli("sagas", "submit", "geo", "--input", "{}", "--id", "cli-1", "--wait", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["saga_id"], doc["saga"], doc["status"], doc["regions"]) == ("cli-1", "geo", "completed", ["eu"])
    assert set(doc["outputs"]) == {"a", "b", "c", "d"}
    code, out, _ = await deployment.cli("sagas", "submit", "geo", "--input", "{}", "--id", "cli-1", "--json")
    assert code == 0 and json.loads(out)["txid"] == doc["txid"]


async def test_submit_of_an_id_with_another_input_exits_2_naming_the_conflict(deployment: Deployment) -> None:
    """The same --id with a different --input is refused (exit 2) with a line that says so; the first saga is untouched."""
    code, out, err = await deployment.cli("sagas", "submit", "geo", "--input", '{"a": 1}', "--id", "cli-3", "--json")
    assert code == 0, err
    txid = json.loads(out)["txid"]
    code, out, err = await deployment.cli("sagas", "submit", "geo", "--input", '{"a": 2}', "--id", "cli-3")
    assert code == 2 and out == ""
    assert "saga id 'cli-3' was submitted before with a different input" in err and f"txid {txid}" in err
    assert "use another id for a new saga" in err and len(err.strip().splitlines()) == 1


async def test_submit_of_a_failing_saga_exits_1_with_the_error(deployment: Deployment, tmp_path: Path) -> None:
    """A saga that compensates makes submit --wait exit 1, naming the status and the error."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"fail": {"c": 9}}))
    code, out, _ = await deployment.cli("sagas", "submit", "geo", "--input", f"@{plan}", "--id", "cli-2", "--wait")
    assert code == 1
    assert "submitted geo cli-2" in out and "compensated" in out and "c failed on attempt 3" in out


async def test_cancel_compensates_a_running_saga(deployment: Deployment) -> None:
    """cancel on a running saga compensates its completed steps; on a finished one it exits 1 and says so."""
    plan = {"dir": str(deployment.dir), "hold": {"b": 1}}
    code, _, err = await deployment.cli("sagas", "submit", "geo", "--input", json.dumps(plan), "--id", "cli-3")
    assert code == 0, err

    async def held() -> None:
        assert any(r["saga_id"] == "cli-3" and r["phase"] == "held" for r in apps.read_runs(deployment.dir))

    await eventually_async(held, timeout=15)
    code, out, err = await deployment.cli("sagas", "cancel", "cli-3")
    assert (code, out.strip()) == (0, "cancel requested for cli-3"), err
    apps.release(deployment.dir)
    async with SagaClient(deployment.client, namespace=deployment.ns) as sagas:
        result = await sagas.wait("cli-3", timeout_s=30, raise_on_failure=False)
    assert result.status == "compensated"
    code, _, err = await deployment.cli("sagas", "cancel", "cli-3")
    assert code == 1 and "already finished" in err


async def test_bad_input_is_refused_before_anything_is_written(deployment: Deployment) -> None:
    """--input that is not JSON exits 2 naming --input; nothing is submitted."""
    code, _, err = await deployment.cli("sagas", "submit", "geo", "--input", "{oops", "--id", "cli-4")
    assert code == 2 and "--input" in err and "not JSON" in err
    assert not (await deployment.client.get(f"{deployment.ns}/submit/cli-4")).kvs
