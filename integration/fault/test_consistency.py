"""The fault suite's etcd consistency check, against real etcd members."""

from __future__ import annotations

import pytest

from whizorch import EtcdClient
from whizorch.testing import LocalEtcdCluster

from .consistency import check_members, known_bug

pytestmark = [pytest.mark.etcd_control, pytest.mark.etcd34]


async def _writes(endpoints: list[str], values: list[str]) -> None:
    async with EtcdClient(endpoints) as client:
        for i, v in enumerate(values):
            await client.put(f"k/{i % 3}", v)


async def test_members_of_one_cluster_agree(etcd_bin: str) -> None:
    """After writes (and a follower killed, written past and restarted: it catches up),
    the three members hash their stores alike."""
    async with LocalEtcdCluster(3, etcd_bin=etcd_bin) as cluster:
        await _writes(cluster.endpoints, [f"v{i}" for i in range(20)])
        leader = await cluster.await_leader()
        follower = next(m for m in cluster.members if m is not leader)
        follower.kill()  # not the leader: a write in flight to a killed leader is lost until its timeout
        await _writes([m.endpoint for m in cluster.members if m is not follower], [f"w{i}" for i in range(20)])
        follower.restart()
        assert await check_members(cluster) is None


async def test_two_histories_at_one_revision_are_found(etcd_bin: str) -> None:
    """Two single-member clusters at the same revision with different values stand in
    for a diverged member: the check reports both views at that revision."""
    async with LocalEtcdCluster(1, etcd_bin=etcd_bin) as a, LocalEtcdCluster(1, etcd_bin=etcd_bin) as b:
        await _writes(a.endpoints, [f"v{i}" for i in range(10)])
        await _writes(b.endpoints, [f"v{i}" for i in range(9)] + ["other"])
        same = await check_members(a, {"a0": a.endpoints[0], "a0-again": a.endpoints[0]})
        assert same is None
        found = await check_members(a, {"a0": a.endpoints[0], "b0": b.endpoints[0]})
        assert found is not None
        assert found.revision == 11  # each store: revision 1 + 10 puts
        assert set(found.members) == {"a0", "b0"}
        assert found.members["a0"][0] != found.members["b0"][0]
        assert "disagree on their KV store up to revision 11" in found.describe()


def test_the_known_bug_is_named_for_its_versions_only() -> None:
    for v in ((3, 5, 0), (3, 5, 1), (3, 5, 2)):
        reason = known_bug(v)
        assert reason is not None and "etcd-io/etcd#13766" in reason and "3.5.3" in reason
    for v in ((3, 5, 3), (3, 5, 17), (3, 4, 23), (3, 6, 0)):
        assert known_bug(v) is None
