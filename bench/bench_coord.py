"""Coordination-layer benchmark: whizorch's primitives as ratios to raw gRPC calls.

One run, one local 3-member etcd cluster (etcd's default 100 ms heartbeat / 1 s
election timeout), one process. First the baseline, raw ``grpc.aio`` Put and Txn
calls with no whizorch code on the path; then, on the same channel target:

* uncontended lock acquire (+ release, shown separately),
* a global ID,
* a fenced compare-and-set write,
* election handover: from the leader's resign() until the next candidate leads.

Prints a table of p50/p99 in milliseconds and each p99 as a ratio to its baseline,
against the targets of the foundation issue. Figures, not a pass/fail test: this
machine is shared and noisy.

    python bench/bench_coord.py [--n 2000] [--members 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import grpc
import grpc.aio

from whizorch import Election, EtcdClient, GlobalIds, Lock, Session, VersionedStore
from whizorch.etcd._methods import METHODS
from whizorch.etcd._proto import rpc_pb2
from whizorch.testing import LocalEtcdCluster


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def paired(
    n: int,
    base: Callable[[], Awaitable[object]],
    op: Callable[[], Awaitable[object]],
    *,
    after: Callable[[], Awaitable[object]] | None = None,
    warmup: int = 50,
) -> tuple[list[float], list[float]]:
    """Time ``base`` and ``op`` alternately, so machine noise hits both alike;
    ``after`` runs untimed after each pair."""
    for _ in range(warmup):
        await base()
        await op()
        if after is not None:
            await after()
    b: list[float] = []
    o: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        await base()
        t1 = time.perf_counter()
        await op()
        t2 = time.perf_counter()
        b.append((t1 - t0) * 1000)
        o.append((t2 - t1) * 1000)
        if after is not None:
            await after()
    return b, o


async def run(n: int, members: int) -> None:
    async with LocalEtcdCluster(members, heartbeat_ms=100, election_ms=1000) as cluster:
        leader = await cluster.await_leader()
        # talk to the Raft leader, as a production client near the leader would
        endpoint = leader.endpoint
        print(f"etcd {'.'.join(map(str, cluster.version))}, {members} members, client -> leader {endpoint}")
        results: dict[str, list[float]] = {}

        # the baseline: raw grpc.aio stubs, no whizorch code on the path
        ch = grpc.aio.insecure_channel(endpoint)
        put = ch.unary_unary(
            METHODS["Put"].path,
            request_serializer=rpc_pb2.PutRequest.SerializeToString,
            response_deserializer=rpc_pb2.PutResponse.FromString,
        )
        txn = ch.unary_unary(
            METHODS["Txn"].path,
            request_serializer=rpc_pb2.TxnRequest.SerializeToString,
            response_deserializer=rpc_pb2.TxnResponse.FromString,
        )

        async def raw_put() -> object:
            return await put(rpc_pb2.PutRequest(key=b"bench/raw", value=b"x"), timeout=5)

        async def raw_txn() -> object:
            # the shape of a guarded write: one compare, one put
            cmp = rpc_pb2.Compare(
                key=b"bench/raw-txn", target=rpc_pb2.Compare.MOD, result=rpc_pb2.Compare.GREATER, mod_revision=-1
            )
            op = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"bench/raw-txn", value=b"x"))
            return await txn(rpc_pb2.TxnRequest(compare=[cmp], success=[op]), timeout=5)

        async with EtcdClient([endpoint]) as client, Session(client, ttl_s=10) as session:
            lock = Lock(session, "bench/lock")

            async def acquire_release() -> None:
                await lock.acquire()
                await lock.release()

            async def acquire() -> None:
                await lock.acquire()

            results["raw txn"], results["lock acquire"] = await paired(n, raw_txn, acquire, after=lock.release)
            _, results["lock acquire+release"] = await paired(n, raw_txn, acquire_release)

            ids = GlobalIds(client, "bench/ids")
            results["raw put"], results["global id"] = await paired(n, raw_put, ids.next)

            store = VersionedStore(client, "bench/")
            await client.delete("bench/cas")
            await lock.acquire()
            fence = lock.fence
            rev = [await store.create("cas", b"0", fence=fence)]

            async def fenced_cas() -> object:
                rev[0] = await store.compare_and_set("cas", b"v", expected_revision=rev[0], fence=fence)
                return rev[0]

            results["raw txn (2)"], results["fenced CAS"] = await paired(n, raw_txn, fenced_cas)
            await lock.release()

            handover: list[float] = []
            rounds = max(20, n // 20)
            async with Session(client, ttl_s=10) as s2:
                a, b = Election(session, "bench/election"), Election(s2, "bench/election")
                await a.campaign("a")
                for i in range(rounds):
                    leader_e, waiter = (a, b) if i % 2 == 0 else (b, a)
                    task = asyncio.ensure_future(waiter.campaign("next"))
                    # the waiter must be queued (its key exists) before the resign
                    while (await client.get("bench/election/", prefix=True, count_only=True)).count < 2:
                        await asyncio.sleep(0.001)
                    t0 = time.perf_counter()
                    await leader_e.resign()
                    await task
                    handover.append((time.perf_counter() - t0) * 1000)
                await a.resign()
                await b.resign()
            results["election handover"] = handover
        await ch.close()

    targets = {
        "lock acquire": ("raw txn", 2.0),
        "lock acquire+release": ("raw txn", None),
        "global id": ("raw put", 1.2),
        "fenced CAS": ("raw txn (2)", 1.3),
        "election handover": ("raw txn", None),
    }
    print()
    print(f"{'operation':<20}{'n':>6}{'p50 ms':>9}{'p99 ms':>9}  {'p99 ratio':<22}{'target':<10}")
    for name, samples in results.items():
        p50, p99 = statistics.median(samples), pct(samples, 99)
        ratio, target = "", ""
        if name in targets:
            base, limit = targets[name]
            r = p99 / pct(results[base], 99)
            ratio = f"{r:.2f}x {base}"
            if limit is not None:
                target = f"<= {limit}x {'ok' if r <= limit else 'MISSED'}"
        print(f"{name:<20}{len(samples):>6}{p50:>9.2f}{p99:>9.2f}  {ratio:<22}{target:<10}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="samples per operation")
    parser.add_argument("--members", type=int, default=3)
    args = parser.parse_args(argv)
    asyncio.run(run(args.n, args.members))
    return 0


if __name__ == "__main__":
    sys.exit(main())
