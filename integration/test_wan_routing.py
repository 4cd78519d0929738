"""Measured-latency routing on the region lab: the leader measures the round trip to
each region's member and the router prefers it over the configured matrix, so when a
link slows down at runtime, new steps that may run in either region move to the one
now closer; ``whizorch status`` shows both figures."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import saga_apps as apps
from _children import children
from _roles import LabRoles

from whizorch import EtcdClient
from whizorch.saga import SagaClient
from whizorch.testing import RegionLab, eventually_async

NS = "routing"
TTL = 2

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
async def direct(region_lab: RegionLab) -> AsyncIterator[EtcdClient]:
    async with EtcdClient(region_lab.cluster.endpoints, timeout_s=5.0, retry_deadline_s=30.0) as c:
        yield c


async def test_a_slower_link_moves_new_steps_to_the_now_closer_region(
    region_lab: RegionLab, direct: EtcdClient, tmp_path: Path
) -> None:
    """Leader in eu, workers in us and ap: steps go to us (80 ms < 200 ms). The eu-us
    round trip is raised to 500 ms: once the leader has measured it, new steps go to
    ap; the published latencies show the measurement next to the configured 80 ms."""
    lab = region_lab
    config = tmp_path / "lab.toml"
    config.write_text(lab.config_toml())
    async with children() as started, SagaClient(direct, namespace=NS) as sagas:
        roles = LabRoles(lab, started, tmp_path, ns=NS, ttl=TTL)
        orch = await roles.orchestrator("eu", "o-eu", "--config", str(config))
        await orch.first_event("leader", 60)
        await roles.worker("us", "w-us")
        await roles.worker("ap", "w-ap")

        async def regions_of(prefix: str, n: int) -> list[str]:
            out = []
            for i in range(n):
                rec = (await sagas.execute(apps.trip, {}, saga_id=f"{prefix}-{i}", timeout_s=60)).record
                out += [st.region or "?" for st in rec.steps]
            return out

        async def published(region: str) -> float:
            doc = json.loads((await direct.get(f"{NS}/latency")).kvs[0].value)
            return float(doc["measured_ms"][region])

        await eventually_async(lambda: published("us"), timeout=20, retry_on=(AssertionError, IndexError, KeyError))
        before = await regions_of("before", 2)
        assert set(before) == {"us"}, before

        lab.set_rtt("eu", "us", 500)

        async def slow() -> None:
            doc = json.loads((await direct.get(f"{NS}/latency")).kvs[0].value)
            assert doc["measured_ms"]["us"] > 250, doc  # the EWMA has moved past ap's 200 ms

        await eventually_async(slow, timeout=30)
        after = await regions_of("after", 2)
        print(f"\n[routing] before {before}, after the eu-us link slowed: {after}")
        assert set(after) == {"ap"}, after
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "whizorch", "status", "--etcd", ",".join(lab.cluster.endpoints), "--namespace", NS,
            "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        lat = json.loads(out)["latency"]
        assert lat["from"] == "eu" and lat["configured_ms"]["us"] == 80 and lat["measured_ms"]["us"] > 250
        assert apps  # the handlers' app


async def test_the_orchestrator_leader_brings_etcds_raft_leader_to_its_region(
    region_lab: RegionLab, direct: EtcdClient, tmp_path: Path
) -> None:
    """An orchestrator in a region whose member is not etcd's Raft leader wins the
    election and moves Raft leadership to its region's member before its first write
    (event ``raft_leader`` with outcome ``moved``); its writes then pay one quorum
    round from home instead of a WAN hop first."""
    lab = region_lab
    raft = lab.wait_leader_region()
    home = next(r for r in lab.regions if r != raft)
    config = tmp_path / "lab.toml"
    config.write_text(lab.config_toml())
    async with children() as started:
        roles = LabRoles(lab, started, tmp_path, ns=NS, ttl=TTL)
        orch = await roles.orchestrator(home, "o-home", "--config", str(config))
        _, moved = await orch.first_event("raft_leader", 60)
        await orch.first_event("leader", 60)
        print(f"\n[locality] etcd leader {raft} -> {lab.leader_region()} (orchestrator in {home}): {moved}")
        assert moved["outcome"] == "moved"
        assert lab.leader_region() == home
