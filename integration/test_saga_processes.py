"""The saga engine with orchestrators and workers as separate processes, on real etcd.

Each role runs as ``python -m whizorch worker|orchestrator --app saga_apps:app ...``
(``PYTHONPATH`` carries this directory), on a fresh 3-member cluster per test. The
tests SIGKILL workers, whole regions and the leader, SIGSTOP the leader past its
lease, and cut the leader from etcd (its only member paused); the handlers record
every run in a shared file (``$SAGA_APPS_DIR``), so a test checks what really ran
where, and that no step ever ran twice at the same time.
Orchestrators print JSON events (``--events``: leader, follower, failover ...); the
times measured are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import saga_apps as apps
from _children import children
from _history import deleted_at, writes
from _roles import RoleLauncher

from whizorch import EtcdClient
from whizorch.saga import SagaClient, SagaRecord
from whizorch.testing import LocalEtcdCluster, eventually_async

TTL = 2
"""Lease TTL (s) of every orchestrator and worker process."""

NS = "procs"
"""The saga namespace of every test here (each test has a cluster of its own)."""


pytestmark = [pytest.mark.slow]


@pytest.fixture
async def cluster_client(etcd_cluster: LocalEtcdCluster) -> AsyncIterator[EtcdClient]:
    """A client on the test's own cluster."""
    async with EtcdClient(etcd_cluster.endpoints, timeout_s=3.0, retry_deadline_s=10.0) as client:
        yield client


@pytest.fixture
async def sagas(cluster_client: EtcdClient) -> AsyncIterator[SagaClient]:
    """A SagaClient in the namespace the processes use."""
    async with SagaClient(cluster_client, namespace=NS) as client:
        yield client


@pytest.fixture
async def roles(etcd_cluster: LocalEtcdCluster, tmp_path: Path) -> AsyncIterator[RoleLauncher]:
    """Role processes on the test's cluster: resumed, killed and reaped after the test."""
    async with children() as started:
        try:
            yield RoleLauncher(
                started, endpoints=etcd_cluster.endpoints, namespace=NS, ttl=TTL, env={apps.DIR_ENV: str(tmp_path)},
                directory=tmp_path, shards=1,  # one shard: one leader's failover (test_shards.py: many)
            )
        finally:
            apps.release(tmp_path)


def runs_of(directory: Path, saga_id: str, *, kind: str = "run", phase: str = "start") -> list[dict[str, Any]]:
    """Recorded runs of ``saga_id`` (one kind and phase), in the order they happened."""
    return [r for r in apps.read_runs(directory) if r["saga_id"] == saga_id and r["kind"] == kind and r["phase"] == phase]


async def held(directory: Path, saga_id: str, step: str, attempt: int = 1) -> dict[str, Any]:
    """Wait until ``step`` of ``saga_id`` runs and is held; its "held" record."""

    def find() -> dict[str, Any] | None:
        return next(
            (r for r in runs_of(directory, saga_id, phase="held") if r["step"] == step and r["attempt"] == attempt),
            None,
        )

    await eventually_async(lambda: find() is not None, timeout=20, message=f"{saga_id} {step} held")
    found = find()
    assert found is not None
    return found


async def back(client: EtcdClient) -> None:
    """o1 is an orchestrator again and o2 still leads the shard."""
    members = await client.get(f"{NS}/orch/", prefix=True)
    assert sorted(json.loads(kv.value)["node"] for kv in members.kvs) == ["o1", "o2"]
    res = await client.get(f"{NS}/leader/", prefix=True, sort_target="create", sort_order="ascend")
    assert [kv.value for kv in res.kvs] == [b"o2"]


def report(what: str, seconds: float) -> None:
    print(f"\n[saga failover] {what}: {seconds:.3f}s (TTL {TTL}s)")


# -- workers ---------------------------------------------------------------------------


@pytest.mark.etcd34
async def test_worker_killed_mid_step_runs_again_elsewhere(roles: RoleLauncher, sagas: SagaClient) -> None:
    """A worker SIGKILLed while it runs step b: its claim expires with its lease, and
    the step runs again on the other worker as attempt 2 with the same idempotency key;
    the saga completes."""
    await roles.orchestrator("o1")
    workers = {"w1": await roles.worker("eu", "w1"), "w2": await roles.worker("eu", "w2")}
    handle = await sagas.submit(apps.trip, {"hold": {"b": 1}}, saga_id="victim")
    first = await held(roles.dir, "victim", "b")
    killed_at = time.time()
    workers[first["worker"]].send(signal.SIGKILL)

    result = await handle.result(timeout_s=30)
    assert result.status == "completed"
    b_runs = [r for r in runs_of(roles.dir, "victim") if r["step"] == "b"]
    assert [(r["attempt"], r["worker"]) for r in b_runs] == [(1, first["worker"]), (2, ({"w1", "w2"} - {first["worker"]}).pop())]
    assert {r["key"] for r in b_runs} == {"victim:b"}
    report("worker SIGKILL -> step b runs again", b_runs[1]["t"] - killed_at)  # a figure: no bound
    ends = [r for r in apps.read_runs(roles.dir) if r["step"] == "b" and r["phase"] == "end"]
    assert [(r["attempt"], r["outcome"]) for r in ends] == [(2, "ok")]  # attempt 1 died with its process
    assert result.outputs["b"] == {"step": "b", "region": "eu", "attempt": 2, "key": "victim:b"}
    b = result.record.steps[1]
    assert (b.run, b.failures) == (2, 1)
    lost = [h for h in result.record.history if h["event"] == "run_failed" and h["step"] == 1]
    assert len(lost) == 1 and "lost its claim" in lost[0]["error"]


@pytest.mark.etcd34
async def test_region_dies_saga_fails_over_to_the_closest_healthy_region(roles: RoleLauncher, sagas: SagaClient) -> None:
    """Every worker of region eu SIGKILLed while step c (the third) runs there: the
    step moves to us, the healthy region closest to eu (ap is farther), and the saga
    completes; its result lists both regions and flags the failover."""
    latency = {"eu": {"us": 80, "ap": 200}, "us": {"ap": 150}}
    orch = await roles.orchestrator("o1", latency=latency)
    await orch.first_event("leader", 30)
    eu = [await roles.worker("eu", "eu-1"), await roles.worker("eu", "eu-2")]
    await roles.worker("us", "us-1")
    await roles.worker("ap", "ap-1")

    handle = await sagas.submit(apps.geo, {"hold": {"c": 1}}, saga_id="travel")
    await held(roles.dir, "travel", "c")
    killed_at = time.time()
    for w in eu:
        w.send(signal.SIGKILL)

    result = await handle.result(timeout_s=60)
    _, moved = await orch.first_event("failover", 30, saga_id="travel")
    report("region eu SIGKILLed -> failover decided", moved["at"] - killed_at)  # a figure: no bound
    assert result.status == "completed"
    assert result.regions == ["eu", "us"]
    assert result.failed_over
    assert [(f["step"], f["from"], f["to"]) for f in result.failovers] == [(2, "eu", "us")]
    runs = runs_of(roles.dir, "travel")
    assert [(r["step"], r["region"]) for r in runs] == [("a", "eu"), ("b", "eu"), ("c", "eu"), ("c", "us"), ("d", "us")]
    assert len({r["key"] for r in runs if r["step"] == "c"}) == 1
    # c may have been sent to eu again first (a retry after one eu worker's lease expired
    # while the other's still held the region up): it never ran there again
    c = result.record.steps[2]
    assert (c.regions[0], c.regions[-1], set(c.regions)) == ("eu", "us", {"eu", "us"})
    assert [s.regions for s in result.record.steps[:2]] == [["eu"], ["eu"]] and result.record.steps[3].regions == ["us"]


# -- the leader ------------------------------------------------------------------------


async def submit_many(sagas: SagaClient, count: int, tag: str) -> list[str]:
    """Submit ``count`` trips whose steps take 0.3 s each; their ids."""
    ids = [f"{tag}-{i}" for i in range(count)]
    plan = {"sleep": {"a": 0.3, "b": 0.3, "c": 0.3, "d": 0.3}}
    await asyncio.gather(*(sagas.submit(apps.trip, plan, saga_id=sid) for sid in ids))
    return ids


def check_every_step_ran(directory: Path, ids: list[str], results: list[Any]) -> None:
    """Every saga completed with each step done; each step has a successful run; no two
    runs of one saga step overlapped in time."""
    assert {r.status for r in results} == {"completed"}, [(r.saga_id, r.status, r.error) for r in results]
    runs = apps.read_runs(directory)
    for sid in ids:
        ok = {r["step"] for r in runs if r["saga_id"] == sid and r["phase"] == "end" and r["outcome"] == "ok"}
        assert ok == {"a", "b", "c", "d"}, sid
    assert apps.overlaps(runs) == []
    for r in results:
        assert [s.state for s in r.record.steps] == ["done"] * 4, r.saga_id


@pytest.mark.etcd34
@pytest.mark.timeout(150)
async def test_leader_killed_next_leader_resumes_every_saga(roles: RoleLauncher, sagas: SagaClient) -> None:
    """The leader SIGKILLed with sagas in flight (and more submitted while nobody
    leads): the other orchestrator leads within about a TTL, rebuilds from etcd and
    drives every saga to completion; no step is lost and none runs twice at once."""
    o1 = await roles.orchestrator("o1")
    _, first = await o1.first_event("leader", 30)
    o2 = await roles.orchestrator("o2")
    await roles.worker("eu", "w1")
    await roles.worker("eu", "w2")
    ids = await submit_many(sagas, 6, "early")

    def in_flight() -> None:
        started = {r["saga_id"] for r in apps.read_runs(roles.dir) if r["step"] == "b"}
        assert len(started) >= 3

    await eventually_async(in_flight, timeout=20)
    killed_at = time.time()
    o1.send(signal.SIGKILL)
    ids += await submit_many(sagas, 2, "orphaned")  # nobody leads yet
    took_at, took = await o2.first_event("leader", TTL + 10)
    report("leader SIGKILL -> next leader leads (rebuilt)", took_at - killed_at)  # a figure: no bound
    assert took["term"] > first["term"]

    results = await asyncio.gather(*(sagas.wait(sid, timeout_s=60) for sid in ids))
    check_every_step_ran(roles.dir, ids, results)
    assert all(r.record.leader_term == took["term"] for r in results)  # the last writer


async def leader_key(client: EtcdClient, term: int) -> bytes:
    """The election key of the leader of ``term``."""
    res = await client.get(f"{NS}/leader/", prefix=True)
    return next(kv.key for kv in res.kvs if kv.create_revision == term)


async def record_writes(client: EtcdClient, since: int) -> list[tuple[int, SagaRecord]]:
    """Every saga record write from revision ``since`` up to now: (revision, record)."""
    return [(kv.mod_revision, SagaRecord.from_json(kv.value)) for kv in await writes(client, f"{NS}/saga/", prefix=True, since=since)]


@pytest.mark.etcd34
@pytest.mark.timeout(150)
async def test_paused_leader_is_replaced_and_its_late_writes_are_fenced(
    roles: RoleLauncher, sagas: SagaClient, cluster_client: EtcdClient
) -> None:
    """The leader SIGSTOPped past its lease with sagas in flight: the other orchestrator
    takes over and every saga completes. Resumed, the old leader reports it lost and
    rejoins as an orchestrator, leaving the shard to the new leader (a leader keeps its
    shard: nothing moves back). In etcd's history, every saga record
    written after the old leader's key was deleted carries the new leader's term: no
    write of the old term landed after the new term began."""
    o1 = await roles.orchestrator("o1")
    _, first = await o1.first_event("leader", 30)
    o2 = await roles.orchestrator("o2")
    await roles.worker("eu", "w1")
    await roles.worker("eu", "w2")
    old_key = await leader_key(cluster_client, first["term"])
    ids = await submit_many(sagas, 6, "paused")

    def in_flight() -> None:
        assert len({r["saga_id"] for r in apps.read_runs(roles.dir) if r["step"] == "b"}) >= 3

    await eventually_async(in_flight, timeout=20)
    paused_at = time.time()
    o1.send(signal.SIGSTOP)
    took_at, took = await o2.first_event("leader", TTL + 10)
    report("leader SIGSTOP -> next leader leads (rebuilt)", took_at - paused_at)
    ended = await deleted_at(cluster_client, old_key, since=first["term"])
    assert first["term"] < took["term"] and first["term"] < ended
    results = await asyncio.gather(*(sagas.wait(sid, timeout_s=60) for sid in ids))
    check_every_step_ran(roles.dir, ids, results)

    o1.send(signal.SIGCONT)
    await o1.first_event("follower", 10, term=0)

    await eventually_async(lambda: back(cluster_client), timeout=15)
    assert len(o1.events("leader")) == 1, o1.describe()
    # etcd's own history: the old term wrote until its key went, the new term after
    written = await record_writes(cluster_client, first["term"])
    assert {rec.leader_term for _, rec in written} <= {first["term"], took["term"]}
    late = [(rev, rec.id) for rev, rec in written if rev > ended and rec.leader_term != took["term"]]
    assert late == [], f"written after the old term ended ({ended}) by another term: {late}"
    assert any(rec.leader_term == first["term"] for _, rec in written)
    assert max(rev for rev, rec in written if rec.leader_term == first["term"]) < ended
    assert any(rev > ended for rev, rec in written if rec.leader_term == took["term"])


@pytest.mark.etcd34
@pytest.mark.timeout(150)
async def test_leader_cut_from_etcd_stops_before_its_lease_expires(etcd_cluster: LocalEtcdCluster, roles: RoleLauncher) -> None:
    """The leader's only etcd member paused with sagas in flight: the leader steps down
    (safe mode) before its lease can expire at the server, the other orchestrator takes
    over, and every saga completes. Once the member is back, whatever the old leader
    had sent it is refused by the fence: no write of the old term lands after its key
    was deleted; the old leader rejoins and leaves the shard to the new one."""
    raft_leader = etcd_cluster.wait_leader()
    # cut a follower: pausing the Raft leader would elect another, and a new Raft leader
    # extends every lease, which would delay the takeover for reasons not tested here
    cut = next(m for m in etcd_cluster.members if m is not raft_leader)
    others = [m.endpoint for m in etcd_cluster.members if m is not cut]
    roles.endpoints = others
    async with (
        EtcdClient(others, timeout_s=3.0, retry_deadline_s=10.0) as client,
        SagaClient(client, namespace=NS) as sagas,
    ):
        o1 = await roles.orchestrator("o1", endpoints=[cut.endpoint])
        _, first = await o1.first_event("leader", 30)
        o2 = await roles.orchestrator("o2")
        await roles.worker("eu", "w1")
        await roles.worker("eu", "w2")
        old_key = await leader_key(client, first["term"])
        ids = await submit_many(sagas, 6, "cut")

        def in_flight() -> None:
            assert len({r["saga_id"] for r in apps.read_runs(roles.dir) if r["step"] == "b"}) >= 3

        await eventually_async(in_flight, timeout=20)
        paused_at = time.time()
        await asyncio.to_thread(cut.pause)
        _, lost = await o1.first_event("follower", TTL + 30, term=0)
        _, took = await o2.first_event("leader", TTL + 30)
        # each event's own time (when the process acted, not when this test read it)
        report("member paused -> old leader stops (safe mode)", lost["at"] - paused_at)
        report("member paused -> next leader leads (rebuilt)", took["at"] - paused_at)
        # the old leader stops on its own clock, before etcd can expire its lease: the
        # promise (what the history check below shows holds whatever the timing)
        assert lost["at"] - paused_at < TTL, o1.describe()
        assert lost["at"] <= took["at"]
        ended = await deleted_at(client, old_key, since=first["term"])
        results = await asyncio.gather(*(sagas.wait(sid, timeout_s=60) for sid in ids))
        check_every_step_ran(roles.dir, ids, results)

        await asyncio.to_thread(cut.resume)

        await eventually_async(lambda: back(client), timeout=20)
        written = await record_writes(client, first["term"])
        late = [(rev, rec.id) for rev, rec in written if rev > ended and rec.leader_term != took["term"]]
        assert late == [], f"written after the old term ended ({ended}) by another term: {late}"
        assert max(rev for rev, rec in written if rec.leader_term == first["term"]) < ended
        assert len(o1.events("leader")) == 1, o1.describe()
