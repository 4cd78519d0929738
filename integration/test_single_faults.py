"""One fault at a time, with real role processes on a real 3-member etcd: each test
pins one finding of the fault run in issue 8 and fails without its fix.

1. the etcd member serving the roles' streams is SIGKILLed: the roles stay (or come
   back) in the deployment, never running on while doing nothing;
2. a paused worker's stale run: the handler is never resumed, and the effect it makes
   in its ``finally`` is refused by the claim's fence at etcd;
3. keys and values that do not parse are quarantined; the leader leads on;
4. many large step outputs: the saga completes (outputs go by reference); a write
   etcd refuses for good fails the saga with the reason instead of looping;
5. etcd's Raft leader SIGKILLed: roles are back within etcd's election time + 1 s.

"Back in the deployment" is checked the hard way: the leader key and every worker's
registration exist, and the same leases still hold them a full TTL later (a role that
died inside a running process would let its lease lapse), and a new saga completes.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import fault_apps
import pytest
from _children import Child, children
from _roles import RoleLauncher

from whizorch import EtcdClient
from whizorch.saga import App, Orchestrator, Saga, SagaClient, Worker
from whizorch.testing import LocalEtcdCluster, eventually_async

TTL = 2
NS = "faults"
HERE = Path(__file__).resolve().parent

pytestmark = [pytest.mark.slow]


@pytest.fixture
async def roles(etcd_cluster: LocalEtcdCluster, tmp_path: Path) -> AsyncIterator[RoleLauncher]:
    """Role processes (``--app fault_apps:app``) on the test's cluster, killed after the test."""
    async with children() as started:
        yield RoleLauncher(
            started, endpoints=etcd_cluster.endpoints, namespace=NS, ttl=TTL, app="fault_apps:app",
            env={"SAGA_APPS_DIR": str(tmp_path), "FAULT_APPS_ETCD": ",".join(etcd_cluster.endpoints)},
            directory=tmp_path, shards=1,  # one shard: one leader's failover (test_shards.py: many)
        )


@pytest.fixture
async def client(etcd_cluster: LocalEtcdCluster) -> AsyncIterator[EtcdClient]:
    async with EtcdClient(etcd_cluster.endpoints, timeout_s=2.0, retry_deadline_s=10.0) as c:
        yield c


@pytest.fixture
async def sagas(client: EtcdClient) -> AsyncIterator[SagaClient]:
    async with SagaClient(client, namespace=NS) as s:
        yield s


async def _service_leases(client: EtcdClient, workers: dict[str, str]) -> dict[str, int] | None:
    """The lease of the leader key and of each worker's registration, or None while
    something is missing."""
    leaders = await client.get(f"{NS}/leader/", prefix=True)
    regs = await client.get(f"{NS}/region/", prefix=True)
    if not leaders.kvs:
        return None
    found = {"leader": min(leaders.kvs, key=lambda kv: kv.create_revision).lease}
    for kv in regs.kvs:
        found[json.loads(kv.value)["worker"]] = kv.lease
    return found if all(w in found for w in workers) else None


async def in_service(client: EtcdClient, workers: dict[str, str], deadline_s: float) -> float:
    """Wait until the leader key and every worker's registration exist and stay on the
    same leases for a full TTL (+0.3 s): a lease nobody keeps alive lapses within that,
    so a role that died inside a running process never passes. Returns when that
    stable state began (polled every 50 ms)."""
    give_up = time.monotonic() + deadline_s + TTL + 1
    current: dict[str, int] | None = None
    since = time.monotonic()
    while time.monotonic() < give_up:
        try:
            now_leases = await _service_leases(client, workers)
        except Exception:  # etcd itself may be electing: poll again
            now_leases = None
        if now_leases != current:
            current, since = now_leases, time.monotonic()
        elif current is not None and time.monotonic() - since >= TTL + 0.3:
            return since
        await asyncio.sleep(0.05)  # ok: polling interval
    raise AssertionError(f"roles not back in service within {deadline_s:.1f}s (+ the TTL check): {current}")


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def alive(*procs: Child) -> None:
    for p in procs:
        assert p.running, f"{p.name} exited on its own:\n{p.describe()}"


# -- 1. the member under the roles killed --------------------------------------------------


async def test_member_serving_the_roles_killed_roles_stay_in_service(
    etcd_cluster: LocalEtcdCluster, roles: RoleLauncher, client: EtcdClient, sagas: SagaClient
) -> None:
    """SIGKILL of the member every role's streams sit on (the first endpoint): within
    TTL + 1 s the leader and the worker are in service again, a saga completes, and no
    role process exits or runs on doing nothing; after the member is restarted too."""
    orch = await roles.orchestrator("o1")
    worker = await roles.worker("eu", "w1")
    await in_service(client, {"w1": "eu"}, 10)
    member = etcd_cluster.members[0]  # every role's first endpoint
    member.kill()
    killed = time.monotonic()
    back = await in_service(client, {"w1": "eu"}, TTL + 1 + 1)
    print(f"\n[single fault] member under the roles killed: in service after {back - killed:.2f}s")
    assert back - killed <= TTL + 1 + 0.5
    handle = await sagas.submit(fault_apps.fenced, {}, saga_id="after-kill")
    (Path(roles.dir) / "release-after-kill").touch()
    assert (await handle.result(timeout_s=20)).status == "completed"
    alive(orch, worker)
    member.restart()
    await in_service(client, {"w1": "eu"}, 10)
    alive(orch, worker)


# -- 5. the Raft leader killed --------------------------------------------------------------


async def test_raft_leader_killed_roles_back_within_election_plus_one_second(
    etcd_cluster_factory: Callable[..., LocalEtcdCluster], tmp_path: Path
) -> None:
    """With etcd's default timings (heartbeat 100 ms, election 1 s) and 2 s leases, the
    Raft leader (also the member the roles use first) is SIGKILLed: the roles are in
    service again within etcd's election time + 1 s (they re-register at once, never
    waiting on a revoke etcd cannot answer yet), and a saga completes."""
    cluster = etcd_cluster_factory(3, heartbeat_ms=100, election_ms=1000)
    leader = cluster.wait_leader()
    others = [m.endpoint for m in cluster.members if m is not leader]
    async with children() as started, EtcdClient(others, timeout_s=2.0, retry_deadline_s=10.0) as c:
        r = RoleLauncher(
            started, endpoints=[leader.endpoint, *others], namespace=NS, ttl=TTL, app="fault_apps:app",
            env={"SAGA_APPS_DIR": str(tmp_path), "FAULT_APPS_ETCD": ",".join([leader.endpoint, *others])},
            directory=tmp_path, shards=1,  # one shard: one leader's failover (test_shards.py: many)
        )
        orch = await r.orchestrator("o1")
        workers = {"w1": "eu", "w2": "us"}
        procs = [await r.worker(region, name) for name, region in workers.items()]
        await in_service(c, workers, 10)
        leader.kill()
        killed = time.monotonic()
        await cluster.await_leader(10)
        elected = time.monotonic()
        back = await in_service(c, workers, 10)
        print(
            f"\n[single fault] raft leader killed: new leader after {elected - killed:.2f}s, "
            f"roles in service after {back - killed:.2f}s"
        )
        assert back - elected <= 1.0 + 0.3, f"{back - elected:.2f}s after the new etcd leader\n" + "\n".join(
            p.describe() for p in (orch, *procs)
        )
        async with SagaClient(c, namespace=NS) as s:
            (tmp_path / "release-after").touch()
            assert (await s.execute(fault_apps.fenced, {}, saga_id="after", timeout_s=20)).status == "completed"
        alive(orch, *procs)


# -- 2. a paused worker's stale run ----------------------------------------------------------


async def test_paused_worker_stale_run_never_resumes_and_its_late_effect_is_refused(
    roles: RoleLauncher, client: EtcdClient, sagas: SagaClient
) -> None:
    """A worker SIGSTOPped mid-step past its lease: the step runs again on the other
    worker (a larger fencing token) and the saga completes. On SIGCONT the stale run is
    never resumed (no line after its wait), and the effect its ``finally`` still makes,
    guarded by its claim, is refused by etcd: the effect key keeps attempt 2's write."""
    await roles.orchestrator("o1")
    ws = {"w1": await roles.worker("eu", "w1"), "w2": await roles.worker("eu", "w2")}
    handle = await sagas.submit(fault_apps.fenced, {}, saga_id="stale")

    def started(attempt: int) -> dict[str, Any] | None:
        return next(
            (x for x in fault_apps.read_lines(roles.dir) if x["event"] == "start" and x["attempt"] == attempt), None
        )

    await eventually_async(lambda: started(1) is not None, timeout=20)
    first = started(1)
    assert first is not None
    paused = ws[first["worker"]]
    paused.send(signal.SIGSTOP)
    result = await handle.result(timeout_s=30)  # attempt 2 runs on the other worker
    assert result.status == "completed"
    second = started(2)
    assert second is not None and second["worker"] != first["worker"]
    assert second["token"] > first["token"]

    (Path(roles.dir) / "release-stale").touch()  # the stale run would go on now, if resumed
    paused.send(signal.SIGCONT)

    def stale_effect() -> dict[str, Any] | None:
        return next(
            (x for x in fault_apps.read_lines(roles.dir) if x["event"] == "effect" and x["attempt"] == 1), None
        )

    await eventually_async(lambda: stale_effect() is not None, timeout=20)
    effect = stale_effect()
    assert effect is not None and effect["committed"] is False
    resumed = [x for x in fault_apps.read_lines(roles.dir) if x["event"] == "resumed"]
    assert [x["attempt"] for x in resumed] == [2]
    stored = json.loads((await client.get(fault_apps.EFFECT_KEY + "stale")).kvs[0].value)
    assert stored == {"attempt": 2, "token": second["token"]}
    rec = result.record.steps[0]
    assert rec.run == 2
    await in_service(client, {"w1": "eu", "w2": "eu"}, TTL + 2)  # the paused worker is back
    alive(*ws.values())


# -- 3. poison input --------------------------------------------------------------------------

POISON: dict[bytes, bytes] = {
    f"{NS}/submit/".encode() + b"\xff": b'{"saga": "fenced", "input": {}}',
    f"{NS}/submit/bad-json".encode(): b"{",
    f"{NS}/submit/wrong-shape".encode(): b"[1, 2]",
    f"{NS}/submit/unknown-type".encode(): b'{"saga": "nope", "input": {}}',
    f"{NS}/submit/odd-trace".encode(): b'{"saga": "fenced", "input": {}, "trace": {"a": 1}}',
    f"{NS}/saga/from-the-future".encode(): b'{"v": 7, "id": "from-the-future"}',
    f"{NS}/run/".encode() + b"x/\xfe/claim": b"{}",
    f"{NS}/run/x/zero/run-1".encode(): b"{}",
    f"{NS}/cancel/".encode() + b"\xfd": b"{}",
    f"{NS}/region/eu/bad".encode(): b'{"compliance": 5}',
}


async def test_poison_keys_are_quarantined_and_the_leader_leads_on(
    roles: RoleLauncher, client: EtcdClient, sagas: SagaClient, unused_tcp_port: int
) -> None:
    """Each kind of unparsable input, written while a leader leads and again before a
    new leader rebuilds: logged, counted (whizorch_quarantined_total), noted for
    ``whizorch status``, skipped or marked failed; the leader keeps its term, sagas
    complete, and a new leader rebuilds over the same keys and leads too."""
    o1 = await roles.orchestrator("o1", "--metrics-bind", f"127.0.0.1:{unused_tcp_port}")
    await roles.worker("eu", "w1")
    term = (await o1.next_event("leader", 20))["term"]
    for key, value in POISON.items():
        await client.put(key, value)
    for sid in ("ok-1", "ok-2"):
        (Path(roles.dir) / f"release-{sid}").touch()
        assert (await sagas.execute(fault_apps.fenced, {}, saga_id=sid, timeout_s=20)).status == "completed"

    async def noted(expected: int) -> list[dict[str, Any]]:
        notes = [json.loads(kv.value) for kv in (await client.get(f"{NS}/quarantine/", prefix=True)).kvs]
        assert len(notes) == expected, sorted(n["key"] for n in notes)
        return notes

    # only the leader writes saga/ records: the leader reads them when it rebuilds (below)
    notes = await eventually_async(lambda: noted(len(POISON) - 1), timeout=10)
    assert {n["kind"] for n in notes} == {"submit", "run", "cancel", "region"}
    assert not any(json.loads(line).get("event") == "follower" for _, line in o1.lines if line.startswith("{"))
    for sid in ("unknown-type", "bad-json", "wrong-shape", "odd-trace"):
        rec = await sagas.get(sid)
        assert rec is not None and rec.status == "failed" and rec.error, sid
    assert (await client.get(f"{NS}/saga/from-the-future")).kvs[0].value == POISON[f"{NS}/saga/from-the-future".encode()]
    metrics = await asyncio.to_thread(_scrape, f"http://127.0.0.1:{unused_tcp_port}/metrics")
    assert 'whizorch_quarantined_total{kind="submit"} 5.0' in metrics, metrics

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "whizorch", "status", "--etcd", ",".join(roles.endpoints), "--namespace", NS, "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=roles.env(),
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    doc = json.loads(out)
    assert len(doc["quarantined"]) == len(POISON) - 1 and doc["leader"]["term"] == term
    assert [r["name"] for r in doc["regions"] if r["healthy"]] == ["eu"]

    # a record from a newer whizorch for a saga in flight (indexed as such, in the one shard)
    await client.put(f"{NS}/live/0/from-the-future", b'{"saga": "fenced", "version": ""}')
    o1.send(signal.SIGKILL)  # a new leader rebuilds over the same poison
    o2 = await roles.orchestrator("o2")
    await o2.next_event("leader", 20)
    (Path(roles.dir) / "release-ok-3").touch()
    assert (await sagas.execute(fault_apps.fenced, {}, saga_id="ok-3", timeout_s=20)).status == "completed"
    notes = await eventually_async(lambda: noted(len(POISON)), timeout=10)
    future = next(n for n in notes if n["kind"] == "saga")
    assert "newer than this whizorch" in future["reason"] and "left untouched" in future["reason"]
    alive(o2)


# -- 4. large outputs, and a write etcd refuses for good ------------------------------------


async def test_thirty_steps_of_60kb_outputs_complete(roles: RoleLauncher, client: EtcdClient, sagas: SagaClient) -> None:
    """30 steps each returning 60 KB (1.8 MB in all, past etcd's 1.5 MiB request limit
    if tasks carried every output): the saga completes, every step sees every earlier
    output whole, and no task written on the way is larger than 64 KiB."""
    await roles.orchestrator("o1")
    await roles.worker("eu", "w1")
    largest = 0

    async def watch_tasks() -> None:
        nonlocal largest
        async with client.watch(f"{NS}/task/", prefix=True) as w:
            async for ev in w:
                largest = max(largest, len(ev.kv.value))

    watcher = asyncio.ensure_future(watch_tasks())
    try:
        result = await sagas.execute(fault_apps.bulky, {"size": 60_000}, saga_id="bulky", timeout_s=60)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert result.status == "completed", result.record.error
    assert len(result.outputs) == 30 and all(len(v) >= 59_990 for v in result.outputs.values())
    assert 0 < largest <= 64 * 1024, largest


async def test_a_transition_etcd_refuses_for_good_fails_the_saga_with_the_reason(
    etcd_cluster: LocalEtcdCluster, tmp_path: Path
) -> None:
    """A leader whose dispatch is over the request limit it may send (here 24 KiB, set
    on its client) does not retry forever: the saga ends ``failed`` with a reason that
    names the limit, and the leader goes on leading (the next small saga completes)."""
    roomy = Saga("roomy")

    @roomy.step
    async def only(ctx: Any, value: Any) -> str:
        return "done"

    app = App([roomy])
    async with (
        EtcdClient(etcd_cluster.endpoints, max_request_bytes=24 * 1024) as tight,
        EtcdClient(etcd_cluster.endpoints) as c,
        Orchestrator(tight, app, namespace=NS, lease_ttl_s=TTL, shards=1) as orch,
        SagaClient(c, namespace=NS) as s,
    ):
        async with Worker(c, app, region="eu", namespace=NS, lease_ttl_s=TTL):
            await orch.wait_leader(10)
            big = await s.execute(roomy, {"blob": "x" * 40_000}, saga_id="too-big", timeout_s=20, raise_on_failure=False)
            assert big.status == "failed"
            assert "over etcd's limit" in (big.record.error or ""), big.record.error
            assert (await s.execute(roomy, {"blob": "small"}, saga_id="small", timeout_s=20)).status == "completed"
            assert orch.is_leader
