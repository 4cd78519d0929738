"""A bug ends a role, loudly: ``join()`` and ``async with`` raise it, and the CLI
process exits non-zero with the message (never a process that runs but does nothing).
Nothing is lost on the way: the step the dead worker had claimed runs elsewhere."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import fault_apps
import pytest
from _children import Child, children

from whizorch import EtcdClient
from whizorch.saga import Orchestrator, Router, SagaClient, Worker
from whizorch.testing import eventually_async

NS = "supervised"
HERE = Path(__file__).resolve().parent

pytestmark = [pytest.mark.slow]


class BuggyRouter(Router):
    """A user's router with a bug in its placement."""

    def pick(self, step: object, *, exclude: frozenset[str] = frozenset()) -> str | None:
        raise RuntimeError("bug in the router")


@pytest.mark.etcd34
async def test_a_bug_in_the_leaders_path_ends_the_orchestrator_and_async_with_raises_it(
    etcd_endpoints: list[str], prefix: str
) -> None:
    """The leader hits a bug (its router raises) while adopting a saga: the orchestrator
    stops, ``join()`` raises the bug, ``async with`` raises it on exit; the submission
    is still in etcd for a fixed leader to adopt."""
    ns = f"{prefix}{NS}"
    async with EtcdClient(etcd_endpoints) as client, SagaClient(client, namespace=ns) as sagas:
        with pytest.raises(RuntimeError, match="bug in the router"):
            async with Orchestrator(client, fault_apps.app, namespace=ns, router=BuggyRouter(), lease_ttl_s=2) as orch:
                await orch.wait_leader(10)
                await sagas.submit(fault_apps.fenced, {}, saga_id="victim")
                async with asyncio.timeout(10):
                    await orch.join()
        assert not orch.is_leader
        assert (await client.get(f"{ns}/submit/victim")).kvs  # nothing lost
        assert not (await client.get(f"{ns}/leader/", prefix=True)).kvs  # resigned


async def test_a_bug_in_a_worker_ends_its_process_with_the_message_and_the_step_runs_elsewhere(
    etcd_endpoints: list[str], prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker process whose app has a bug exits non-zero with the bug's message as
    soon as it meets a step; its claim goes with its lease and a healthy worker runs
    the step: the saga completes."""
    ns = f"{prefix}{NS}"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
    env["SAGA_APPS_DIR"] = str(tmp_path)
    env["FAULT_APPS_ETCD"] = ",".join(etcd_endpoints)
    (tmp_path / "release-victim").touch()
    for name in ("SAGA_APPS_DIR", "FAULT_APPS_ETCD"):  # the healthy worker runs in this process
        monkeypatch.setenv(name, env[name])
    async with (
        children() as started,
        EtcdClient(etcd_endpoints) as client,
        SagaClient(client, namespace=ns) as sagas,
        Orchestrator(client, fault_apps.app, namespace=ns, lease_ttl_s=2) as orch,
    ):
        await orch.wait_leader(10)
        argv = [
            sys.executable, "-m", "whizorch", "worker", "--etcd", ",".join(etcd_endpoints), "--namespace", ns,
            "--app", "fault_apps:broken_app", "--region", "eu", "--lease-ttl", "2", "--id", "buggy",
        ]  # fmt: skip
        buggy = await Child.start("buggy", argv, env=env)
        started.append(buggy)
        await buggy.next_event("worker_ready", 30)
        handle = await sagas.submit(fault_apps.fenced, {}, saga_id="victim")
        async with asyncio.timeout(20):
            code = await buggy.process.wait()
        assert code != 0
        await asyncio.sleep(0.2)  # ok: let the reader tasks take the last stderr lines
        assert any("bug in the app's lookup" in line for line in buggy.stderr), buggy.describe()
        try:
            async with Worker(client, fault_apps.app, region="eu", namespace=ns, lease_ttl_s=2):
                result = await handle.result(timeout_s=20)
        finally:
            await fault_apps.close_client()
        assert result.status == "completed"
        assert result.record.steps[0].run == 2  # the dead worker's claim went with its lease


@pytest.mark.etcd34
async def test_a_saga_waiting_for_a_region_is_picked_up_by_the_next_leader(
    etcd_endpoints: list[str], prefix: str
) -> None:
    """Sagas whose first step waits for a region (no fit worker) when their leader
    goes: the next leader re-arms each wait and, as its rebuilt view already has a fit
    region for one of them, runs that step at once (no region change needs to come);
    the other, which no region fits, ends by its no_region timeout instead of running
    forever (found by the fault suite, seed 3)."""
    from whizorch.saga import App, Saga, Settings

    ns = f"{prefix}{NS}-wait"
    moon, mars = Saga("moon"), Saga("mars")

    @moon.step(compliance={"moon"})
    async def on_moon(ctx: object, value: object) -> str:
        return "ran"

    @mars.step(compliance={"mars"})  # no worker will ever carry this tag
    async def on_mars(ctx: object, value: object) -> str:
        return "ran"

    app = App([moon, mars])
    settings = Settings(no_region_timeout_s=3.0)
    async with EtcdClient(etcd_endpoints) as client, SagaClient(client, namespace=ns) as sagas:
        async with Orchestrator(client, app, namespace=ns, lease_ttl_s=2, settings=settings) as first:
            await first.wait_leader(10)
            picked = await sagas.submit(moon, {}, saga_id="picked-up")
            stranded = await sagas.submit(mars, {}, saga_id="never")

            async def waiting() -> None:
                for sid in ("picked-up", "never"):
                    rec = await sagas.get(sid)
                    assert rec is not None and rec.steps[0].waiting_region, rec

            await eventually_async(waiting, timeout=10)
        async with (
            Worker(client, app, region="moon", namespace=ns, compliance={"moon"}, lease_ttl_s=2),
            Orchestrator(client, app, namespace=ns, lease_ttl_s=2, settings=settings) as second,
        ):
            await second.wait_leader(10)
            assert (await picked.result(timeout_s=20)).status == "completed"
            result = await stranded.result(timeout_s=20, raise_on_failure=False)
            assert result.status in ("failed", "compensated"), result.record
            assert "no healthy region" in (result.record.error or "")
