"""The leader's batched writes against real etcd, in one process.

The leader commits the transitions of many sagas in one txn (each saga's compares in
a nested txn, its fence around them all). These tests step into that write path with
a client whose ``txn`` does the real call and then misbehaves: another writer moves
one saga's record inside a batch; a batch's answer comes late (a worker's result gets
to the leader before the write that dispatched its run is acknowledged); the leader
dies between a batch's commit and its acknowledgement. Every saga must still end
completed with each step's handler run exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import saga_apps as apps

from whizorch import EtcdClient
from whizorch.errors import OutcomeUnknownError
from whizorch.etcd import TxnResult
from whizorch.saga import Orchestrator, SagaClient, Worker
from whizorch.testing import eventually_async

TTL = 2
NS_TAIL = "batches"


class Hooked:
    """An EtcdClient whose txn runs ``hook(call, compare, success, failure)`` around
    the real call (``call()`` sends it)."""

    def __init__(self, client: EtcdClient) -> None:
        self.client = client
        self.hook: Callable[..., Awaitable[TxnResult]] | None = None
        real = client.txn

        async def txn(compare: Any, success: Any = (), failure: Any = (), **kw: Any) -> TxnResult:
            async def call() -> TxnResult:
                return await real(compare, success, failure, **kw)

            if self.hook is None:
                return await call()
            return await self.hook(call, compare, success, failure)

        client.txn = txn  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def stack(etcd_endpoints: list[str]) -> AsyncIterator[tuple[Hooked, EtcdClient, contextlib.AsyncExitStack]]:
    async with contextlib.AsyncExitStack() as st:
        leader_client = await st.enter_async_context(EtcdClient(etcd_endpoints, timeout_s=3.0))
        other = await st.enter_async_context(EtcdClient(etcd_endpoints, timeout_s=3.0))
        yield Hooked(leader_client), other, st


def runs(directory: Path) -> dict[tuple[str, str], int]:
    """Handler starts per (saga, step)."""
    out: dict[tuple[str, str], int] = {}
    for r in apps.read_runs(directory):
        if r["phase"] == "start" and r["kind"] == "run":
            out[(r["saga_id"], r["step"])] = out.get((r["saga_id"], r["step"]), 0) + 1
    return out


WORKERS: dict[str, list[Worker]] = {}


async def roles(
    st: contextlib.AsyncExitStack, leader_client: EtcdClient, other: EtcdClient, ns: str, *, workers: int = 2
) -> Orchestrator:
    orch = await st.enter_async_context(Orchestrator(leader_client, apps.app, namespace=ns, lease_ttl_s=TTL, shards=1))
    WORKERS[ns] = [
        await st.enter_async_context(Worker(other, apps.app, region="eu", namespace=ns, lease_ttl_s=TTL))
        for _ in range(workers)
    ]
    await orch.wait_leader(10)
    return orch


async def run_all(client: EtcdClient, ns: str, ids: list[str], directory: Path) -> None:
    """Run the sagas at once: each completed, every step's handler run once."""
    async with contextlib.AsyncExitStack() as st:
        sagas = SagaClient(client, namespace=ns)
        st.push_async_callback(sagas.aclose)
        results = await asyncio.gather(
            *(sagas.execute(apps.trip, {"dir": str(directory)}, saga_id=sid, timeout_s=30) for sid in ids)
        )
    assert [r.status for r in results] == ["completed"] * len(ids)
    assert runs(directory) == {(sid, step): 1 for sid in ids for step in "abcd"}
    for r in results:
        assert [(st.run, st.failures) for st in r.record.steps] == [(1, 0)] * 4


def nested(success: Any) -> int:
    """How many nested txns a txn carries (a leader batch: one per saga)."""
    return sum(1 for op in success if op._pb.WhichOneof("request") == "request_txn")


async def test_a_conflict_on_one_saga_fails_only_that_saga(etcd_endpoints: list[str], prefix: str, tmp_path: Path) -> None:
    """Inside the first batch of several saga updates (leader writes are slowed until
    then, so batches form whatever the machine's speed), another writer moves one saga's
    record: that saga's nested compare fails and it is re-read and re-applied; the
    others in the batch commit as they were. Every saga completes, each step once."""
    async with stack(etcd_endpoints) as (hooked, other, st):
        ns = prefix + NS_TAIL
        orch = await roles(st, hooked.client, other, ns)
        done: list[tuple[int, int]] = []  # (sagas in the batch, of which committed)

        async def interfere(call: Callable[[], Awaitable[TxnResult]], compare: Any, success: Any, failure: Any) -> TxnResult:
            if not done:
                # until the interference happened, every leader write takes 0.2 s, so its
                # in-flight slots stay full and the next transitions gather in a batch
                await asyncio.sleep(0.2)  # ok: a deliberately slow write, not a wait for state
            if not done and nested(success) >= 3:
                victim = next(
                    op._pb.request_txn.compare[0].key for op in success if op._pb.WhichOneof("request") == "request_txn"
                )
                cur = await other.get(victim)
                if cur.kvs:  # an update (not a creation): touch the record under the leader
                    await other.put(victim, cur.kvs[0].value)
                    res = await call()
                    done.append((nested(success), sum(r.succeeded for r in res.responses if isinstance(r, TxnResult))))
                    return res
            return await call()

        hooked.hook = interfere
        await run_all(other, ns, [f"c{i}" for i in range(12)], tmp_path)
        assert done, "no batch of 3+ saga updates happened"
        n, committed = done[0]
        assert committed == n - 1  # the one whose record moved; the rest committed with it
        assert orch.is_leader


async def test_results_before_the_adoption_is_acknowledged(etcd_endpoints: list[str], prefix: str, tmp_path: Path) -> None:
    """Every leader write's answer comes 0.3 s late: workers may record results for runs
    whose dispatch the leader has not seen acknowledged (the first even before the
    saga's record is in its cache). Each result is applied, in order, once; the delay
    hook did delay the dispatches (how many results beat their acknowledgement depends
    on the machine's speed: printed)."""
    async with stack(etcd_endpoints) as (hooked, other, st):
        ns = prefix + NS_TAIL
        await roles(st, hooked.client, other, ns)
        delayed: list[bytes] = []  # task keys the delayed writes put
        early: list[bytes] = []  # of which a result existed before the leader heard back

        async def late(call: Callable[[], Awaitable[TxnResult]], compare: Any, success: Any, failure: Any) -> TxnResult:
            res = await call()
            if nested(success):
                await asyncio.sleep(0.3)  # ok: the answer of a committed leader write arrives late
                tasks = [k for k in put_keys(success) if k.startswith(f"{ns}/task/".encode())]
                delayed.extend(tasks)
                if tasks and (await other.get(f"{ns}/run/", prefix=True, count_only=True)).count:
                    early.extend(tasks)
            return res

        hooked.hook = late
        await run_all(other, ns, ["late-1", "late-2", "late-3"], tmp_path)
        assert delayed, "the delay hook never delayed a write that dispatched a run"
        print(f"\n[leader batches] {len(delayed)} dispatches answered late; results already recorded for {len(early)}")


async def test_leader_dies_between_a_batchs_commit_and_its_acknowledgement(
    etcd_endpoints: list[str], prefix: str, tmp_path: Path
) -> None:
    """The leader's batch commits at etcd, then the leader dies before it hears so
    (its answer never comes; its lease is revoked as if its process were killed).
    The next leader rebuilds from etcd: the committed dispatches are not sent again,
    every saga completes, each step's handler ran once."""
    async with stack(etcd_endpoints) as (hooked, other, st):
        ns = prefix + NS_TAIL
        first = await roles(st, hooked.client, other, ns)
        second = await st.enter_async_context(Orchestrator(other, apps.app, namespace=ns, lease_ttl_s=TTL, shards=1))
        killed = asyncio.Event()

        async def die(call: Callable[[], Awaitable[TxnResult]], compare: Any, success: Any, failure: Any) -> TxnResult:
            if not killed.is_set():
                # as in the conflict test: slow writes keep the in-flight slots full, so a batch forms
                await asyncio.sleep(0.2)  # ok: a deliberately slow write, not a wait for state
            res = await call()
            if not killed.is_set() and nested(success) >= 2 and res.succeeded:
                killed.set()
                leader = await other.get(f"{ns}/leader/", prefix=True)
                first_in = min(leader.kvs, key=lambda kv: kv.create_revision)
                await other.lease_revoke(first_in.lease)  # the leader's lease ends with it
                await asyncio.Event().wait()  # and it never hears back
            return res

        hooked.hook = die
        await run_all(other, ns, [f"k{i}" for i in range(10)], tmp_path)
        assert killed.is_set(), "no batch of 2+ saga updates happened"
        assert second.is_leader and not first.is_leader


@pytest.mark.parametrize("count", [150])
async def test_more_sagas_than_one_txn_holds(etcd_endpoints: list[str], prefix: str, tmp_path: Path, count: int) -> None:
    """150 sagas at once: the leader's batches stay within etcd's --max-txn-ops
    (a batch etcd refused would fail the test's sagas), and they do batch."""
    async with stack(etcd_endpoints) as (hooked, other, st):
        ns = prefix + NS_TAIL
        orch = await roles(st, hooked.client, other, ns, workers=3)
        widest: list[int] = [0]

        async def count_ops(call: Callable[[], Awaitable[TxnResult]], compare: Any, success: Any, failure: Any) -> TxnResult:
            widest[0] = max(widest[0], nested(success))
            return await call()

        hooked.hook = count_ops
        await run_all(other, ns, [f"m{i}" for i in range(count)], tmp_path)
        writes = orch._terms[0].writes  # one shard: every saga's writes share its batcher
        assert writes.batcher.items > writes.batcher.batches
        assert 1 < widest[0] <= 64
        # nothing is left behind once idle: no task counted on a worker, no run or mark
        # in a worker (the marks of finished runs clear as their tasks' deletions arrive)
        await eventually_async(
            lambda: all(not w._done and not w._running for w in WORKERS[ns]) and not any(writes.outstanding.values()),
            timeout=5,
        )
        assert sum(w.completed for w in WORKERS[ns]) == 4 * count


async def b_held(directory: Path) -> None:
    """Wait until step b runs and is held."""

    def check() -> None:
        assert any(r["step"] == "b" and r["phase"] == "held" for r in apps.read_runs(directory))

    await eventually_async(check, timeout=15)


def put_keys(ops: Any) -> list[bytes]:
    """Every key a list of ops puts, nested txns included."""
    out: list[bytes] = []
    for op in ops:
        pb = getattr(op, "_pb", op)
        kind = pb.WhichOneof("request")
        if kind == "request_put":
            out.append(pb.request_put.key)
        elif kind == "request_txn":
            out += put_keys(pb.request_txn.success)
    return out


async def test_a_write_whose_answer_is_lost_but_committed(etcd_endpoints: list[str], prefix: str, tmp_path: Path) -> None:
    """The leader's write that dispatches step b commits, but its answer is lost
    (OutcomeUnknownError). The leader re-reads the record and which tasks exist: b's
    task is known, so the cancel that comes while b runs neither puts b on another
    worker nor leaves it untracked. b runs once; the saga ends compensated."""
    async with stack(etcd_endpoints) as (hooked, other, st):
        ns = prefix + NS_TAIL
        orch = await roles(st, hooked.client, other, ns)
        lost: list[bytes] = []

        async def lose(call: Callable[[], Awaitable[TxnResult]], compare: Any, success: Any, failure: Any) -> TxnResult:
            res = await call()
            b_task = [k for k in put_keys(success) if b"/task/" in k and k.endswith(b"/lost/1/run-1")]
            if not lost and b_task and res.succeeded:
                lost.extend(b_task)
                raise OutcomeUnknownError("the answer was lost (test)")
            return res

        hooked.hook = lose
        sagas = SagaClient(other, namespace=ns)
        try:
            handle = await sagas.submit(apps.trip, {"dir": str(tmp_path), "hold": {"b": 1}}, saga_id="lost")

            await b_held(tmp_path)
            await handle.cancel()
            await asyncio.sleep(0.5)  # ok: give the cancel's write time to (wrongly) move b
            apps.release(tmp_path, "lost", "b")
            result = await handle.result(timeout_s=30, raise_on_failure=False)
        finally:
            await sagas.aclose()
        assert lost, "the write dispatching b was not seen"
        assert result.status == "compensated"
        starts = [(r["step"], r["attempt"]) for r in apps.read_runs(tmp_path) if r["phase"] == "start" and r["kind"] == "run"]
        assert starts == [("a", 1), ("b", 1)]
        assert (await other.get(f"{ns}/task/", prefix=True, count_only=True)).count == 0
        writes = orch._terms[0].writes
        await eventually_async(lambda: not any(writes.outstanding.values()), timeout=5)


async def test_a_draining_workers_unfinished_run_moves_without_a_retry(
    etcd_endpoints: list[str], prefix: str, tmp_path: Path
) -> None:
    """A worker closed (drain) while its step is still held: it marks itself draining,
    waits out its drain timeout, leaves. Its run goes to the other worker under the same
    attempt: no retry spent on a graceful leave (a crash would count one)."""
    async with stack(etcd_endpoints) as (hooked, other, st):
        ns = prefix + NS_TAIL
        orch = await st.enter_async_context(Orchestrator(hooked.client, apps.app, namespace=ns, lease_ttl_s=TTL, shards=1))
        leaving = Worker(other, apps.app, region="eu", namespace=ns, lease_ttl_s=TTL, drain_timeout_s=0.5)
        await leaving.start()
        await orch.wait_leader(10)
        sagas = SagaClient(other, namespace=ns)
        try:
            handle = await sagas.submit(apps.trip, {"dir": str(tmp_path), "hold": {"b": 1}}, saga_id="drained")

            await b_held(tmp_path)
            await st.enter_async_context(Worker(other, apps.app, region="eu", namespace=ns, lease_ttl_s=TTL))
            await leaving.aclose()  # b is held past the drain timeout: cancelled there
            apps.release(tmp_path)
            result = await handle.result(timeout_s=30)
        finally:
            await sagas.aclose()
        starts = [(r["step"], r["attempt"]) for r in apps.read_runs(tmp_path) if r["phase"] == "start" and r["kind"] == "run"]
        assert starts == [("a", 1), ("b", 1), ("b", 1), ("c", 1), ("d", 1)]
        b = result.record.steps[1]
        assert (b.run, b.failures) == (1, 0) and result.status == "completed"


async def test_the_client_reads_outputs_at_the_records_revision(etcd_endpoints: list[str], prefix: str, tmp_path: Path) -> None:
    """The outcome's outputs are read at the final record's revision (serializable: no
    quorum round); at a revision the member has not applied (or compacted) the client
    falls back to a linearizable read, with the same outputs."""
    async with stack(etcd_endpoints) as (hooked, other, st):
        ns = prefix + NS_TAIL
        await roles(st, hooked.client, other, ns)
        sagas = SagaClient(other, namespace=ns)
        try:
            result = await sagas.execute(apps.trip, {"dir": str(tmp_path)}, saga_id="outs", timeout_s=30)
            rec, revision = await sagas._get_at("outs")
            assert rec is not None and revision > 0
            future = await sagas._result(rec, revision + 10**9)  # not applied anywhere: falls back
            current = await sagas._result(rec, revision)
        finally:
            await sagas.aclose()
        assert set(result.outputs) == set("abcd")
        assert future.outputs == current.outputs == result.outputs
