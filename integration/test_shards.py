"""Sharded leadership with real orchestrator processes on real etcd.

A namespace of 8 shards, several ``python -m whizorch orchestrator`` processes: the
shards are shared evenly and rebalance as orchestrators come and go (a shard handed
over by resigning), a SIGKILLed or SIGSTOPped shard leader's shards are led again while
the other shards go on, and etcd's own history proves the per-shard fencing: every saga
record write was made by the leader of that saga's shard at that revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import saga_apps as apps
from _children import Child, children
from _history import deleted_at, events, shard_term_violations
from _roles import RoleLauncher

from whizorch import EtcdClient
from whizorch.errors import EtcdUnavailableError
from whizorch.etcd import TxnResult
from whizorch.saga import Orchestrator, SagaClient
from whizorch.saga._shards import shard_of
from whizorch.testing import LocalEtcdCluster, eventually_async

NS = "shards"
SHARDS = 8
WAIT_S = 60.0
"""A generous deadline for what converges (shares, takeovers) on a slow day."""

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def shares(client: EtcdClient) -> dict[str, list[int]]:
    """Each orchestrator node's shards, from the election keys (the lowest create
    revision under ``leader/<k>/`` leads shard k)."""
    got = await client.get(f"{NS}/leader/", prefix=True)
    best: dict[int, tuple[int, str]] = {}
    for kv in got.kvs:
        shard = int(kv.key.decode().split("/")[2])
        if shard not in best or kv.create_revision < best[shard][0]:
            best[shard] = (kv.create_revision, kv.value.decode())
    out: dict[str, list[int]] = {}
    for shard, (_, node) in sorted(best.items()):
        out.setdefault(node, []).append(shard)
    return out


async def settled(client: EtcdClient, nodes: set[str]) -> dict[str, list[int]]:
    """Wait until every shard is led, by ``nodes`` only, in even shares."""

    async def check() -> dict[str, list[int]]:
        now = await shares(client)
        assert set(now) == nodes, now
        assert sorted(k for ks in now.values() for k in ks) == list(range(SHARDS)), now
        sizes = Counter(len(ks) for ks in now.values())
        assert max(sizes) - min(sizes) <= 1, now
        return now

    return await eventually_async(check, timeout=WAIT_S, message=f"shards shared evenly by {sorted(nodes)}")


def sid_on(shards_of: list[int], prefix: str, n: int) -> list[str]:
    """``n`` saga ids that fall in ``shards_of``."""
    out, i = [], 0
    while len(out) < n:
        sid = f"{prefix}-{i}"
        if shard_of(sid, SHARDS) in shards_of:
            out.append(sid)
        i += 1
    return out


@pytest.fixture
async def deployment(etcd_cluster: LocalEtcdCluster, tmp_path: Path) -> AsyncIterator[tuple[RoleLauncher, EtcdClient, int]]:
    """Role processes on the test's cluster (8 shards), a client, and the revision
    before anything was written (for the history check)."""
    async with EtcdClient(etcd_cluster.endpoints, timeout_s=5.0, retry_deadline_s=20.0) as client, children() as started:
        since = (await client.get("x")).header.revision
        yield (
            RoleLauncher(
                started, endpoints=etcd_cluster.endpoints, namespace=NS, ttl=15, env={apps.DIR_ENV: str(tmp_path)},
                directory=tmp_path, shards=SHARDS,
            ),
            client,
            since,
        )
        apps.release(tmp_path)


async def two_orchestrators(roles: RoleLauncher, client: EtcdClient) -> tuple[Child, dict[str, list[int]]]:
    """Two eu workers and orchestrators o1 and o2, once they share the shards: o1's
    process and the shares."""
    await roles.worker("eu", "w1")
    await roles.worker("eu", "w2")
    o1 = await roles.orchestrator("o1")
    await roles.orchestrator("o2")
    return o1, await settled(client, {"o1", "o2"})


async def fenced_per_shard(client: EtcdClient, since: int) -> None:
    """etcd's history: every saga record write was made by its shard's leader then."""
    history = await events(client, f"{NS}/", since=since)
    assert any(ev.kv.key.startswith(f"{NS}/saga/".encode()) for ev in history)
    assert shard_term_violations(history, NS, SHARDS) == []


async def test_shards_are_shared_evenly_and_rebalance_as_orchestrators_come_and_go(
    deployment: tuple[RoleLauncher, EtcdClient, int], tmp_path: Path
) -> None:
    """One orchestrator leads all 8 shards; a second and a third join and the shares
    become 4/4 and 3/3/2 (shards handed over by resigning); one leaves on SIGTERM
    (exit 0) and the other two lead 4/4 again long before its 15 s lease could lapse.
    Sagas run throughout: each completes, every step once, and etcd's history shows
    every record write made by its shard's leader at the time."""
    roles, client, since = deployment
    for region in ("eu", "eu"):
        await roles.worker(region, f"w-{time.monotonic_ns()}")
    o1 = await roles.orchestrator("o1")
    assert await settled(client, {"o1"}) == {"o1": list(range(SHARDS))}
    async with SagaClient(client, namespace=NS) as sagas:
        done: list[str] = []

        async def batch(tag: str) -> None:
            ids = [f"{tag}-{i}" for i in range(16)]
            results = await asyncio.gather(*(sagas.execute(apps.trip, {"dir": str(tmp_path)}, saga_id=s, timeout_s=WAIT_S) for s in ids))
            assert {r.status for r in results} == {"completed"}
            done.extend(ids)

        await batch("one")
        o2 = await roles.orchestrator("o2")
        moving = asyncio.ensure_future(batch("joining"))
        two = await settled(client, {"o1", "o2"})
        await moving
        assert sorted(len(v) for v in two.values()) == [4, 4]
        await roles.orchestrator("o3")
        three = await settled(client, {"o1", "o2", "o3"})
        assert sorted(len(v) for v in three.values()) == [2, 3, 3]
        # a shard leader that stays is not moved for nothing: o1 kept shards it led
        assert set(three["o1"]) <= set(two["o1"])
        await batch("three")

        o2.send(signal.SIGTERM)
        assert await o2.wait_exit(WAIT_S) == 0
        left = await settled(client, {"o1", "o3"})  # resigned: no 15 s lease to wait out
        assert sorted(len(v) for v in left.values()) == [4, 4]
        await batch("after")
    runs = [(r["saga_id"], r["step"]) for r in apps.read_runs(tmp_path) if r["phase"] == "start" and r["kind"] == "run"]
    assert sorted(runs) == sorted((s, step) for s in done for step in "abcd")
    assert o1.running
    await fenced_per_shard(client, since)


async def test_a_shard_leader_sigkilled_only_its_shards_move_and_the_others_go_on(
    deployment: tuple[RoleLauncher, EtcdClient, int], tmp_path: Path
) -> None:
    """Two orchestrators (15 s leases), sagas held mid-step on both halves. o1 is
    SIGKILLed: sagas on o2's shards keep completing while o1's shards still wait for its
    lease to lapse (no stall outside the dead leader's shards); then o2 leads o1's shards
    too, every held saga completes, o2's own shards never changed leader, and etcd's
    history shows the per-shard fencing held."""
    roles, client, since = deployment
    o1, before = await two_orchestrators(roles, client)
    async with SagaClient(client, namespace=NS) as sagas:
        held = sid_on(before["o1"], "held-1", 3) + sid_on(before["o2"], "held-2", 3)
        handles = [await sagas.submit(apps.trip, {"dir": str(tmp_path), "hold": {"b": 1}}, saga_id=s) for s in held]

        def all_held() -> None:
            assert {r["saga_id"] for r in apps.read_runs(tmp_path) if r["phase"] == "held"} == set(held)

        await eventually_async(all_held, timeout=WAIT_S)
        terms_o2 = {kv.key: kv.create_revision for kv in (await client.get(f"{NS}/leader/", prefix=True)).kvs if kv.value == b"o2"}
        o1.send(signal.SIGKILL)
        killed = time.monotonic()
        # on o2's shards nothing waits for the dead leader
        fresh = sid_on(before["o2"], "during", 6)
        results = await asyncio.gather(*(sagas.execute(apps.trip, {"dir": str(tmp_path)}, saga_id=s, timeout_s=WAIT_S) for s in fresh))
        assert {r.status for r in results} == {"completed"}
        assert set(await _leading_keys(client, "o1")) == set(before["o1"]), "o1's shards were not waiting for its lease"
        print(f"\n[shards] 6 sagas on the live leader's shards done {time.monotonic() - killed:.2f}s after the kill")
        now = await settled(client, {"o2"})
        print(f"[shards] o1's shards led again {time.monotonic() - killed:.2f}s after the kill (lease TTL 15 s)")
        assert now == {"o2": list(range(SHARDS))}
        apps.release(tmp_path)
        assert {(await h.result(timeout_s=WAIT_S)).status for h in handles} == {"completed"}
    # o2's own shards kept their leader and term throughout
    still = {kv.key: kv.create_revision for kv in (await client.get(f"{NS}/leader/", prefix=True)).kvs if kv.value == b"o2"}
    assert {k: v for k, v in still.items() if k in terms_o2} == terms_o2
    await fenced_per_shard(client, since)


async def _leading_keys(client: EtcdClient, node: str) -> list[int]:
    """The shards ``node`` still has the (lowest) election key of."""
    return (await shares(client)).get(node, [])


async def test_a_paused_shard_leader_is_fenced_and_rejoins(
    etcd_cluster: LocalEtcdCluster, tmp_path: Path
) -> None:
    """o1 SIGSTOPped past its 3 s lease with sagas in flight on its shards: o2 leads
    every shard and the sagas complete; resumed, o1 finds its session lost, registers
    again and gets its share back (o2 resigns shards to it). Whatever o1 had in flight
    when it stopped is refused by the fence: etcd's history shows every record write
    made by the leader of its saga's shard at that revision."""
    async with EtcdClient(etcd_cluster.endpoints, timeout_s=5.0, retry_deadline_s=20.0) as client, children() as started:
        since = (await client.get("x")).header.revision
        roles = RoleLauncher(
            started, endpoints=etcd_cluster.endpoints, namespace=NS, ttl=3, env={apps.DIR_ENV: str(tmp_path)},
            directory=tmp_path, shards=SHARDS,
        )
        o1, before = await two_orchestrators(roles, client)
        async with SagaClient(client, namespace=NS) as sagas:
            ids = sid_on(before["o1"], "paused", 6)
            plan = {"dir": str(tmp_path), "sleep": {"a": 0.2, "b": 0.2, "c": 0.2}}
            handles = [await sagas.submit(apps.trip, plan, saga_id=s) for s in ids]
            await eventually_async(lambda: any(r["saga_id"] in ids for r in apps.read_runs(tmp_path)), timeout=WAIT_S)
            o1.send(signal.SIGSTOP)
            try:
                await settled(client, {"o2"})
                assert {(await h.result(timeout_s=WAIT_S)).status for h in handles} == {"completed"}
            finally:
                o1.send(signal.SIGCONT)
            back = await settled(client, {"o1", "o2"})
            assert sorted(len(v) for v in back.values()) == [4, 4]
            after = await sagas.execute(apps.trip, {"dir": str(tmp_path)}, saga_id=sid_on(back["o1"], "back", 1)[0], timeout_s=WAIT_S)
            assert after.status == "completed"
        assert o1.running
        await fenced_per_shard(client, since)


def test_the_history_check_catches_a_write_outside_its_term() -> None:
    """The fencing check itself: a write by the shard's leader passes; one made after
    its key was deleted, one by a later candidate while the leader still held the
    shard, and one by another shard's leader are each reported."""
    from whizorch import EventType, KeyValue, WatchEvent
    from whizorch.saga import SagaRecord

    sid = "s-1"
    shard = shard_of(sid, SHARDS)
    other = (shard + 1) % SHARDS

    def put(key: str, value: bytes, create: int, rev: int) -> WatchEvent:
        return WatchEvent(EventType.PUT, KeyValue(key.encode(), value, create, rev, 1, 0), None)

    def delete(key: str, rev: int) -> WatchEvent:
        return WatchEvent(EventType.DELETE, KeyValue(key.encode(), b"", 0, rev, 0, 0), None)

    def record(term: int, rev: int) -> WatchEvent:
        rec = SagaRecord(id=sid, saga="trip", txid=1, status="running", steps=[], created=0.0, updated=0.0, leader_term=term)
        return put(f"{NS}/saga/{sid}", rec.to_json(), 2, rev)

    election = [put(f"{NS}/leader/{shard}/a", b"o1", 10, 10), put(f"{NS}/leader/{shard}/b", b"o2", 11, 11),
                put(f"{NS}/leader/{other}/c", b"o3", 12, 12)]  # fmt: skip
    assert shard_term_violations([*election, record(10, 13)], NS, SHARDS) == []
    assert len(shard_term_violations([*election, record(11, 13)], NS, SHARDS)) == 1  # a candidate, not the leader
    assert len(shard_term_violations([*election, record(12, 13)], NS, SHARDS)) == 1  # another shard's leader
    late = [*election, delete(f"{NS}/leader/{shard}/a", 14), record(10, 15)]
    assert len(shard_term_violations(late, NS, SHARDS)) == 1  # after its key was gone
    assert shard_term_violations([*election, delete(f"{NS}/leader/{shard}/a", 14), record(11, 15)], NS, SHARDS) == []


async def test_a_resign_etcd_does_not_answer_is_retried_so_no_shard_is_stranded(etcd_endpoints: list[str], prefix: str) -> None:
    """A shard handed over whose resign etcd did not answer (nor the first withdrawal):
    the old leader's key is deleted once etcd answers, so the new owner leads the shard.
    A key left behind would lead the shard with nobody driving it, the new owner queued
    behind it for as long as the old leader's session lives."""
    ns = f"{prefix}stranded"
    failed: list[bytes] = []

    async with EtcdClient(etcd_endpoints, timeout_s=5.0) as a_client, EtcdClient(etcd_endpoints, timeout_s=5.0) as b_client:
        real = a_client.txn

        async def txn(compare: Any, success: Any = (), failure: Any = (), **kw: Any) -> TxnResult:
            deletes = [op._pb.request_delete_range.key for op in success
                       if op._pb.WhichOneof("request") == "request_delete_range"]  # fmt: skip
            if len(failed) < 2 and any(key.startswith(f"{ns}/leader/".encode()) for key in deletes):
                failed.append(deletes[0])
                raise EtcdUnavailableError("injected: etcd did not answer this delete")
            return await real(compare, success, failure, **kw)

        a_client.txn = txn  # type: ignore[method-assign]
        async with Orchestrator(a_client, apps.app, namespace=ns, node_id="A", lease_ttl_s=15, shards=2) as a:
            await a.wait_leader(WAIT_S)
            assert sorted(a.shards) == [0, 1]
            async with Orchestrator(b_client, apps.app, namespace=ns, node_id="B", lease_ttl_s=15, shards=2) as b:
                await eventually_async(lambda: handed_over(b_client, ns, a, b), timeout=WAIT_S, message="shard handed over")
    assert len(failed) == 2 and failed[0] == failed[1]  # the resign, then the first withdrawal


async def test_a_stray_key_of_a_live_orchestrator_is_withdrawn(etcd_endpoints: list[str], prefix: str) -> None:
    """A key of an orchestrator's session in the election of a shard it does not
    campaign for (what a campaign's put carried out late, by a member that was paused,
    leaves) is withdrawn by that orchestrator: the shard's election holds its leader only."""
    ns = f"{prefix}stray"
    async with EtcdClient(etcd_endpoints, timeout_s=5.0) as client, contextlib.AsyncExitStack() as st:
        a = await st.enter_async_context(Orchestrator(client, apps.app, namespace=ns, node_id="A", lease_ttl_s=15, shards=2))
        b = await st.enter_async_context(Orchestrator(client, apps.app, namespace=ns, node_id="B", lease_ttl_s=15, shards=2))
        await eventually_async(lambda: handed_over(client, ns, a, b), timeout=WAIT_S, message="shards shared")
        members = await client.get(f"{ns}/orch/", prefix=True)
        a_lease = next(kv.lease for kv in members.kvs if b'"A"' in kv.value)
        (b_shard,) = b.shards
        stray = f"{ns}/leader/{b_shard}/{a_lease:x}"
        put = await client.put(stray, b"A", lease=a_lease)  # behind B's key: queued, and nobody campaigns with it
        await eventually_async(lambda: handed_over(client, ns, a, b), timeout=WAIT_S, message="stray key withdrawn")
        assert await deleted_at(client, stray, since=put.header.revision) > put.header.revision
        assert list(b.shards) == [b_shard]


async def handed_over(client: EtcdClient, ns: str, a: Orchestrator, b: Orchestrator) -> None:
    """Each of ``a`` and ``b`` leads one of the 2 shards, and each election holds one key."""
    keys = await client.get(f"{ns}/leader/", prefix=True)
    assert len(keys.kvs) == 2, [kv.key for kv in keys.kvs]  # one key per shard: none left behind
    assert len(a.shards) == 1 and len(b.shards) == 1 and {*a.shards, *b.shards} == {0, 1}, (a.shards, b.shards)
