"""Clients of the WAN benchmark, each run as a process placed in a region of the lab
(``RegionLab.popen``: inside the region's network namespace, its endpoints in
``WHIZORCH_ETCD_ENDPOINTS``, its own member first). One JSON object per line on stdout.

    ops     --n N [--max-s S]     a raw gRPC Put (the baseline), consensus round trip
                                  (propose_value), global ID (GlobalIds.next), lock acquire
                                  and release (Lock), timed in turn, N of each after a warm-up
    watch   --n N --prefix P      watch P from now; "ready" once the watch exists, then
                                  one line per event with the wall clock it arrived
    write   --n N --prefix P      N puts under P, spaced; each with its revision and the
                                  wall clock its answer arrived (the commit, seen from the
                                  leader's region)
    sagas   --n N --namespace NS  N sagas one after another (SagaClient.execute); each
                                  with its latency and the times the record and the
                                  handlers stamped; then the store revisions they took
    submit  --id ID --input JSON  one saga, to the end; its outcome and the wall clock
    load    --inflight K          K sagas in flight, each followed by the next, until a line
                                  on stdin; then the last ones finish ("loaded" once K are
                                  in flight, "stopped" with the counts)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from typing import Any

import grpc
import grpc.aio

from whizorch import EtcdClient, GlobalIds, Lock, Session, propose_value
from whizorch.etcd._methods import METHODS
from whizorch.etcd._proto import rpc_pb2
from whizorch.saga import SagaClient

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_wan_apps import wan  # noqa: E402


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def endpoints() -> list[str]:
    return os.environ["WHIZORCH_ETCD_ENDPOINTS"].split(",")


def region() -> str:
    return os.environ.get("WHIZORCH_LAB_REGION", "?")


def client() -> EtcdClient:
    return EtcdClient(endpoints(), timeout_s=10.0, retry_deadline_s=20.0)


async def ops(args: argparse.Namespace) -> None:
    here = region()
    ms: dict[str, list[float]] = {"raw": [], "propose": [], "id": [], "acquire": [], "release": [], "acquire+release": []}
    at: dict[str, list[float]] = {name: [] for name in ms}  # each sample's start, wall clock
    # the baseline: a raw grpc.aio Put to the region's own member, no whizorch code on the path
    channel = grpc.aio.insecure_channel(endpoints()[0])
    raw_put = channel.unary_unary(
        METHODS["Put"].path,
        request_serializer=rpc_pb2.PutRequest.SerializeToString,
        response_deserializer=rpc_pb2.PutResponse.FromString,
    )
    raw_key = f"bench/raw/{here}".encode()
    async with client() as etcd, Session(etcd, ttl_s=30) as session:
        ids = GlobalIds(etcd, f"bench/ids/{here}")
        lock = Lock(session, f"bench/lock/{here}")  # one lock per region: uncontended
        key = f"bench/propose/{here}"
        stop_at = time.monotonic() + args.max_s
        for i in range(args.warmup + args.n):
            if i >= args.warmup and time.monotonic() > stop_at:
                break
            wall = time.time()
            tr = time.perf_counter()
            await raw_put(rpc_pb2.PutRequest(key=raw_key, value=b"x"), timeout=10)
            t0 = time.perf_counter()
            await propose_value(etcd, key, str(i))
            t1 = time.perf_counter()
            await ids.next()
            t2 = time.perf_counter()
            await lock.acquire()
            t3 = time.perf_counter()
            await lock.release()
            t4 = time.perf_counter()
            if i >= args.warmup:
                for name, start, took in (("raw", tr, t0 - tr), ("propose", t0, t1 - t0), ("id", t1, t2 - t1),
                                          ("acquire", t2, t3 - t2), ("release", t3, t4 - t3),
                                          ("acquire+release", t2, t4 - t2)):
                    ms[name].append(took * 1000)
                    at[name].append(wall + start - tr)
    await channel.close()
    emit(event="ops", region=here, ms=ms, at=at)


async def watch(args: argparse.Namespace) -> None:
    async with client() as etcd, etcd.watch(args.prefix, prefix=True) as w:
        await w.wait_created(timeout_s=30)
        emit(event="ready", region=region())
        seen = 0
        async for ev in w:
            emit(event="seen", rev=ev.revision, t=time.time())
            seen += 1
            if seen >= args.n:
                break


async def write(args: argparse.Namespace) -> None:
    rng = random.Random(1)
    async with client() as etcd:
        for _ in range(3):
            await etcd.put(f"{args.prefix}warm", b"x")
        emit(event="warm")
        if args.go:  # wait until the benchmark says every watcher is ready
            await asyncio.to_thread(sys.stdin.readline)
        for i in range(args.n):
            await asyncio.sleep(args.gap_s * (0.5 + rng.random()))  # ok: spaced writes
            sent = time.time()
            res = await etcd.put(f"{args.prefix}{i % 8}", str(i).encode())
            emit(event="put", rev=res.header.revision, sent=sent, acked=time.time())


async def sagas(args: argparse.Namespace) -> None:
    async with client() as etcd, SagaClient(etcd, namespace=args.namespace) as sc:
        for i in range(args.warmup):
            await sc.execute(wan, {"warm": i}, saga_id=f"warm-{i}", timeout_s=60)
        rev0 = (await etcd.get(b"bench/none")).header.revision
        for i in range(args.n):
            t0 = time.time()
            res = await sc.execute(wan, {"i": i}, saga_id=f"lat-{i}", timeout_s=60)
            t1 = time.time()
            rec = res.record
            emit(
                event="saga", saga_id=res.saga_id, status=res.status, regions=res.regions, submitted=t0, returned=t1,
                created=rec.created, finished=rec.finished,
                steps=[
                    {"region": st.region, "dispatched": st.dispatched_at, "ended": st.ended,
                     "handler": (res.outputs.get(st.name) or {}).get("t"), "runs": st.run}
                    for st in rec.steps
                ],
            )
        rev1 = (await etcd.get(b"bench/none")).header.revision
        emit(event="revisions", sagas=args.n, revisions=rev1 - rev0)  # reads take no revision


async def submit(args: argparse.Namespace) -> None:
    async with client() as etcd, SagaClient(etcd, namespace=args.namespace) as sc:
        t0 = time.time()
        res = await sc.execute(wan, json.loads(args.input), saga_id=args.id, timeout_s=120, raise_on_failure=False)
        emit(event="done", saga_id=res.saga_id, status=res.status, regions=res.regions, failovers=res.failovers,
             submitted=t0, t=time.time())


async def load(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    counts = {"done": 0, "failed": 0}

    async def one_after_another(k: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            res = await sc.execute(wan, {"k": k}, saga_id=f"load-{k}-{i}", timeout_s=120, raise_on_failure=False)
            counts["done" if res.ok else "failed"] += 1

    async with client() as etcd, SagaClient(etcd, namespace=args.namespace) as sc:
        tasks = [asyncio.ensure_future(one_after_another(k)) for k in range(args.inflight)]
        await asyncio.sleep(2.0)  # ok: every loop has submitted its first saga
        emit(event="loaded", inflight=args.inflight)
        await asyncio.to_thread(sys.stdin.readline)
        stop.set()
        await asyncio.gather(*tasks)
    emit(event="stopped", **counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("ops")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--max-s", type=float, default=600.0, help="stop sampling after this long")
    p = sub.add_parser("watch")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--prefix", required=True)
    p = sub.add_parser("write")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--gap-s", type=float, default=0.03)
    p.add_argument("--go", action="store_true", help="start writing after a line on stdin")
    p = sub.add_parser("sagas")
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--namespace", required=True)
    p = sub.add_parser("submit")
    p.add_argument("--id", required=True)
    p.add_argument("--input", default="{}")
    p.add_argument("--namespace", required=True)
    p = sub.add_parser("load")
    p.add_argument("--inflight", type=int, required=True)
    p.add_argument("--namespace", required=True)
    args = parser.parse_args()
    run = {"ops": ops, "watch": watch, "write": write, "sagas": sagas, "submit": submit, "load": load}[args.what]
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
