"""Split-brain and partitions on the region lab (eu, us, ap apart; RTT 80/150/200 ms),
with every role a real process placed in its region.

* the orchestrator leader's region cut from the other two: the leader stops writing
  (safe mode; the delay is printed, 750 ms is the target) before a leader on the
  majority side takes over, etcd's history
  holds no write of the old term after the takeover, and after the heal the old
  leader rejoins as a follower;
* no spurious safe mode in a quiet run with jitter;
* a worker region cut off mid-saga: its step moves, the stale run records nothing, the
  saga's outcome is counted once;
* one-way partitions and a flapping link: sagas finish, nothing is lost, no step runs
  twice at the same time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import saga_apps as apps
from _children import children
from _history import deleted_at, writes
from _roles import LabRoles

from whizorch import EtcdClient
from whizorch.saga import SagaClient, SagaRecord
from whizorch.testing import RegionLab, eventually_async

NS = "split"
TTL = 2

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def lab(region_lab: RegionLab) -> RegionLab:
    return region_lab


@pytest.fixture
async def direct(lab: RegionLab) -> AsyncIterator[EtcdClient]:
    """The test's own client: the lab's direct view (undelayed, never cut)."""
    async with EtcdClient(lab.cluster.endpoints, timeout_s=5.0, retry_deadline_s=30.0) as c:
        yield c


@pytest.fixture
async def sagas(direct: EtcdClient) -> AsyncIterator[SagaClient]:
    async with SagaClient(direct, namespace=NS) as s:
        yield s


@pytest.fixture
async def roles(lab: RegionLab, tmp_path: Path) -> AsyncIterator[LabRoles]:
    async with children() as started:
        try:
            yield LabRoles(lab, started, tmp_path, ns=NS, ttl=TTL)
        finally:
            apps.release(tmp_path)


async def test_leader_region_cut_off_stops_writing_before_the_majority_takes_over(
    lab: RegionLab, roles: LabRoles, sagas: SagaClient, direct: EtcdClient
) -> None:
    """The orchestrator leader's region (eu) is cut from us and ap while sagas stream:
    eu's leader enters safe mode before us's candidate leads (how long after the cut is
    printed: a speed figure, not a promise a slow machine keeps); no
    saga record is written with the old term after the new term began; every saga
    completes; after the heal eu's orchestrator is a follower again, alive."""
    o_eu = await roles.orchestrator("eu", "o-eu")
    _, old = await o_eu.first_event("leader", 60)
    o_us = await roles.orchestrator("us", "o-us")
    for region in ("us", "ap"):
        await roles.worker(region, f"w-{region}")
    handles = [await sagas.submit(apps.trip, {"sleep": {"b": 0.2}}, saga_id=f"pre-{i}") for i in range(4)]

    assert o_eu.events("safe_mode") == [], o_eu.describe()
    cut_at = time.time()
    lab.isolate("eu")
    _, safe = await o_eu.first_event("safe_mode", 10)
    detected = safe["at"] - cut_at
    _, new = await o_us.first_event("leader", 30)
    print(f"\n[split brain] safe mode {detected * 1000:.0f} ms after the cut; o-us leads after {new['at'] - cut_at:.2f}s")
    # what holds at any speed: eu paused its writes before us led (the figures are printed)
    assert safe["at"] <= new["at"], (safe, new)
    assert new["term"] > old["term"]
    handles += [await sagas.submit(apps.trip, {}, saga_id=f"during-{i}") for i in range(4)]
    for h in handles:
        assert (await h.result(timeout_s=60)).status == "completed"
    takeover = await deleted_at(
        direct, f"{NS}/leader/", prefix=True, since=old["term"], which=lambda kv: kv.create_revision == old["term"]
    )
    written = [SagaRecord.from_json(kv.value) for kv in await writes(direct, f"{NS}/saga/", prefix=True, since=takeover + 1)]
    late = [r for r in written if r.leader_term == old["term"]]
    assert late == [], [(r.id, r.leader_term) for r in late]

    lab.heal()
    await o_eu.first_event("follower", 10)
    await eventually_async(lambda: not o_eu.events("leader")[1:], timeout=1)  # never led again

    async def rejoined() -> None:  # eu is an orchestrator again; us keeps the shard
        members = sorted(json.loads(kv.value)["node"] for kv in (await direct.get(f"{NS}/orch/", prefix=True)).kvs)
        leaders = [kv.value for kv in (await direct.get(f"{NS}/leader/", prefix=True)).kvs]
        assert (members, leaders) == (["o-eu", "o-us"], [b"o-us"]), (o_eu.describe(), o_us.describe())

    await eventually_async(rejoined, timeout=30)
    assert o_eu.running and o_us.running, o_eu.describe()
    assert (await sagas.execute(apps.trip, {}, saga_id="after", timeout_s=60)).status == "completed"


@pytest.mark.parametrize("region_lab", [{"jitter_ms": 10.0}], indirect=True)
async def test_no_spurious_safe_mode_in_a_quiet_minute_with_jitter(
    lab: RegionLab, roles: LabRoles, sagas: SagaClient
) -> None:
    """60 s of sagas across the regions, links jittered by +-10 ms, no fault: the
    leader never enters safe mode."""
    orch = await roles.orchestrator(lab.wait_leader_region(), "o1")
    await orch.first_event("leader", 60)
    for region in lab.regions:
        await roles.worker(region, f"w-{region}")
    end = time.monotonic() + 60
    n = 0
    while time.monotonic() < end:
        assert (await sagas.execute(apps.trip, {}, saga_id=f"q-{n}", timeout_s=30)).status == "completed"
        n += 1
    print(f"\n[split brain] {n} sagas in 60 s, safe mode entered {len(orch.events('safe_mode'))} times")
    assert orch.events("safe_mode") == []
    assert len(orch.events("leader")) == 1


async def test_worker_region_cut_mid_saga_moves_the_step_and_counts_the_outcome_once(
    lab: RegionLab, roles: LabRoles, sagas: SagaClient, direct: EtcdClient
) -> None:
    """Step b runs (held) on eu's only worker when eu is cut off: the step fails over to
    another region and the saga completes; after the heal the stale eu run records
    nothing (its session is lost: the handler is stopped, its claim gone), and the
    saga has one outcome with b's result from the new region."""
    await roles.orchestrator("us", "o-us")
    await roles.worker("eu", "w-eu")
    await roles.worker("us", "w-us")
    handle = await sagas.submit(apps.geo, {"hold": {"b": 1}, "hold_in": {"b": "eu"}}, saga_id="moved")

    def held() -> bool:
        return any(r["phase"] == "held" and r["step"] == "b" for r in apps.read_runs(roles.dir))

    await eventually_async(held, timeout=30)
    lab.isolate("eu")
    result = await handle.result(timeout_s=60)
    assert result.status == "completed"
    b = result.record.steps[1]
    assert b.region != "eu" and b.run == 2 and "eu" in b.regions
    apps.release(roles.dir, "moved", "b")
    lab.heal()
    await asyncio.sleep(TTL + 1)  # ok: give the healed worker time to try anything it would
    stale = await direct.get(f"{NS}/run/moved/1/run-1")
    assert not stale.kvs  # the stale run recorded nothing
    assert (await sagas.get("moved")) == result.record  # one outcome, unchanged
    ends = [r for r in apps.read_runs(roles.dir) if r["step"] == "b" and r["phase"] == "end"]
    assert [(r["attempt"], r["outcome"]) for r in ends if r["outcome"] == "ok"] == [(2, "ok")]


@pytest.mark.parametrize("mode", ["one-way", "flapping"])
async def test_one_way_partitions_and_a_flapping_link_lose_nothing(
    lab: RegionLab, roles: LabRoles, sagas: SagaClient, mode: str
) -> None:
    """While sagas stream across the regions, either one-way cuts come and go between
    each pair, or the eu-us link flaps (cut/heal every 300 ms) for 20 s: every saga
    completes, and no step ever runs twice at the same time."""
    await roles.orchestrator("us", "o-us")
    await roles.orchestrator("eu", "o-eu")
    for region in lab.regions:
        await roles.worker(region, f"w-{region}")

    async def chaos() -> None:
        end = time.monotonic() + 20
        pairs = [("eu", "us"), ("us", "ap"), ("ap", "eu"), ("us", "eu")]
        i = 0
        while time.monotonic() < end:
            if mode == "flapping":
                lab.partition("eu", "us")
                await asyncio.sleep(0.3)  # ok: the flap period
                lab.heal()
                await asyncio.sleep(0.3)  # ok: the flap period
            else:
                a, b = pairs[i % len(pairs)]
                lab.partition(a, b, one_way=True)
                await asyncio.sleep(2.0)  # ok: a one-way cut held for a while
                lab.heal()
                await asyncio.sleep(1.0)  # ok: healed for a while
                i += 1
        lab.heal()

    faults = asyncio.ensure_future(chaos())
    handles = []
    try:
        n = 0
        while not faults.done():
            handles.append(await sagas.submit(apps.trip, {"sleep": {"b": 0.1}}, saga_id=f"{mode}-{n}"))
            n += 1
            await asyncio.sleep(0.25)  # ok: the submission rate
    finally:
        await faults
    outcomes = [(await h.result(timeout_s=90)).status for h in handles]
    print(f"\n[split brain] {mode}: {len(outcomes)} sagas, {outcomes.count('completed')} completed")
    assert outcomes == ["completed"] * len(handles)
    assert apps.overlaps(apps.read_runs(roles.dir)) == []
