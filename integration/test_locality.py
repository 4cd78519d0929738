"""Leader locality on the region lab: MoveLeader hands etcd's Raft leadership to any
region's member, and bringing it to the writer's region makes that region's
linearizable writes about one WAN round trip cheaper.

The lab's own view (``lab.cluster``: undelayed, etcd's ``etcd_server_is_leader``
metric) is the judge of who leads. The write measurement runs in a process placed in
eu, so it needs the lab's network namespaces (root and ``ip netns``) and is skipped
with the reason elsewhere; moving leadership is also tried in approximate mode.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import pytest

from whizorch.errors import ConfigError
from whizorch.etcd import EtcdClient
from whizorch.testing import RegionLab, eventually_async

pytestmark = [pytest.mark.slow, pytest.mark.etcd_control]

NETNS = pytest.param({"mode": "netns"}, id="netns", marks=pytest.mark.netns)
APPROXIMATE = pytest.param({"mode": "approximate"}, id="approximate")

# p50 of linearizable puts from a client placed in a region, before and after
# bring_raft_leader(its own member); the cost of the move itself; a second call's cost;
# and what puts sent while the move ran saw
MEASURE = r"""
import asyncio, json, sys, time
from whizorch.etcd import EtcdClient
from whizorch.saga._locality import bring_raft_leader

async def puts(client, count):
    took = []
    for i in range(count):
        start = time.perf_counter()
        await client.put(b"locality/put", str(i).encode())
        took.append((time.perf_counter() - start) * 1000)
    return took

async def main():
    endpoints, home, count = sys.argv[1].split(","), sys.argv[2].split(","), int(sys.argv[3])
    async with EtcdClient(endpoints, timeout_s=10.0) as client, EtcdClient(endpoints, timeout_s=10.0) as other:
        await puts(client, 3)
        await puts(other, 1)
        before = await puts(client, count)
        during, errors, moving = [], [], True

        async def writer():
            while moving:
                start = time.perf_counter()
                try:
                    await other.put(b"locality/during", b"x")
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                during.append((time.perf_counter() - start) * 1000)

        task = asyncio.ensure_future(writer())
        moved = await bring_raft_leader(client, home, timeout_s=10.0)
        moving = False
        await task
        again = await bring_raft_leader(client, home, timeout_s=10.0)
        await puts(client, 3)
        after = await puts(client, count)
    print(json.dumps({
        "before": before, "after": after, "during": during, "errors": errors,
        "moved": [moved.outcome.value, moved.leader_before, moved.target, moved.leader_after,
                  moved.took_s, moved.reason],
        "again": [again.outcome.value, again.took_s],
    }))

asyncio.run(main())
"""


async def _member_ids(client: EtcdClient) -> dict[str, int]:
    return {m.name: m.id for m in await client.member_list()}


async def _leader_region(lab: RegionLab) -> str | None:
    return await asyncio.to_thread(lab.leader_region)


async def _leads(lab: RegionLab, region: str) -> bool:
    return await _leader_region(lab) == region


@pytest.mark.parametrize("region_lab", [NETNS, APPROXIMATE], indirect=True)
async def test_move_leader_hands_leadership_to_each_region(region_lab: RegionLab) -> None:
    """move_leader makes each region's member the Raft leader in turn (the lab's metrics
    agree); a member that already leads returns at once; a bad target is a ConfigError
    naming it."""
    lab = region_lab
    first = await asyncio.to_thread(lab.wait_leader_region)
    took: dict[str, float] = {}
    async with EtcdClient(lab.cluster.endpoints, timeout_s=10.0) as client:
        ids = await _member_ids(client)
        assert sorted(ids) == sorted(lab.regions)
        # every target differs from the leader before it: three real transfers
        for region in [*(r for r in lab.regions if r != first), first]:
            start = time.perf_counter()
            await client.move_leader(ids[region])
            took[region] = (time.perf_counter() - start) * 1000
            await eventually_async(lambda region=region: _leads(lab, region), timeout=5)
            assert (await client.leader_status()).member_id == ids[region]
        start = time.perf_counter()
        await client.move_leader(ids[first])
        already = (time.perf_counter() - start) * 1000
        assert await _leader_region(lab) == first
        with pytest.raises(ConfigError, match="deadbeef.*not a member") as caught:
            await client.move_leader(0xDEADBEEF)
        assert caught.value.field == "target_member_id" and caught.value.value == 0xDEADBEEF
        with pytest.raises(ConfigError, match="positive integer"):
            await client.move_leader(0)
    print(
        f"\n{lab.mode}: leader first in {first}; move_leader took "
        + ", ".join(f"-> {r} {ms:.0f} ms" for r, ms in took.items())
        + f"; to the member that leads {already:.0f} ms"
    )


def _run_placed(lab: RegionLab, region: str, *args: str) -> Any:
    done = subprocess.run(
        lab.command(region, [sys.executable, "-c", MEASURE, *args]),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("region_lab", [NETNS], indirect=True)
def test_bringing_the_leader_home_saves_a_wan_round_trip_per_write(region_lab: RegionLab) -> None:
    """From eu with etcd's leader in ap, a put costs RTT(eu, ap) + RTT(ap, us) = 350 ms
    at least; after bring_raft_leader(eu's member) it costs RTT(eu, us) = 80 ms. The p50s
    must differ by at least 0.7 x the floors' difference; a second call is a cheap no-op;
    a write in flight during the move may end unknown, as in any election, and nothing worse."""
    lab = region_lab
    far, home = "ap", "eu"
    asyncio.run(_move(lab, far))
    assert lab.leader_region() == far
    floor_far, floor_home = lab.put_floor_ms(home, leader=far), lab.put_floor_ms(home, leader=home)

    got = _run_placed(lab, home, ",".join(lab.endpoints(home)), lab.endpoints(home)[0], "20")

    outcome, before_id, target, after_id, move_s, reason = got["moved"]
    ids = asyncio.run(_ids(lab))
    assert outcome == "moved", reason
    assert (before_id, target, after_id) == (ids[far], ids[home], ids[home])
    assert lab.leader_region() == home
    again, again_s = got["again"]
    assert again == "home" and again_s < 0.1, got["again"]
    p50_far, p50_home = statistics.median(got["before"]), statistics.median(got["after"])
    print(
        f"\nput from {home}: leader in {far} p50 {p50_far:.1f} ms (floor {floor_far:g}); "
        f"after bring_raft_leader p50 {p50_home:.1f} ms (floor {floor_home:g}); "
        f"saved {p50_far - p50_home:.1f} ms (floors differ by {floor_far - floor_home:g}); "
        f"the move took {move_s * 1000:.0f} ms, a second call {again_s * 1000:.1f} ms; "
        f"{len(got['during'])} puts during the move: max {max(got['during'], default=0):.0f} ms, "
        f"{len(got['errors'])} failed {got['errors'][:2]}"
    )
    assert p50_far - p50_home >= 0.7 * (floor_far - floor_home)
    assert 0.8 * floor_home <= p50_home <= 1.5 * floor_home + 10
    # a leader change leaves writes in flight at the old leader unknown (etcd: "request
    # timed out, possibly due to previous leader failure"), as any election does
    assert all(e.startswith(("OutcomeUnknownError", "EtcdUnavailableError")) for e in got["errors"]), got


async def _ids(lab: RegionLab) -> dict[str, int]:
    async with EtcdClient(lab.cluster.endpoints, timeout_s=10.0) as client:
        return await _member_ids(client)


async def _move(lab: RegionLab, region: str) -> None:
    async with EtcdClient(lab.cluster.endpoints, timeout_s=10.0) as client:
        await client.move_leader((await _member_ids(client))[region])
