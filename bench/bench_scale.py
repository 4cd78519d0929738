"""Scale: 100,000 finished sagas retained and 10,000 in flight (issue 10, part 4).

Seeds a local etcd (1 member by default, ``--members 3`` for a cluster) with saga
records built by ``SagaRecord.to_json``, as the engine leaves them for the bench's
3-step saga (bench_apps.three: reserve@eu, charge@us, ship@ap):

- a finished saga: ``saga/<id>`` (completed, every step done, 8 history entries),
  ``submit/<id>`` and one result per step;
- an in-flight saga: its record (step 0 done, step 1 dispatched), ``submit/<id>``,
  step 0's result and step 1's task, put on a lease granted here as a live worker's
  lease would be, beside that worker's registration in each region (key schema v2).

Then prints, each next to its target: ``whizorch sagas list`` and ``whizorch status``
(child process and in-process), etcd bytes per finished and per in-flight saga (the
backend's in-use bytes after compaction and defragmentation), the paged namespace
read, and a new leader's rebuild (Orchestrator start to ``is_leader``) with its memory
per saga (tracemalloc: Python allocations the leader holds after the rebuild).
Figures are printed, never asserted. ``--quick``: 10,000 + 1,000 sagas.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import bench_apps as apps

from whizorch import EtcdClient
from whizorch.cli._inspect import Target, _status
from whizorch.etcd import Op
from whizorch.saga import Orchestrator, SagaRecord, StepState
from whizorch.saga._listing import scan_sagas
from whizorch.saga._model import Keys, ResultPayload, TaskPayload, encode_json
from whizorch.saga._snapshot import read_namespace
from whizorch.testing import LocalEtcdCluster, find_etcdctl

NS = "whizorch"
STEPS = (("reserve", "eu"), ("charge", "us"), ("ship", "ap"))
SAGA = apps.three.name
OPS_PER_TXN = 125  # etcd's --max-txn-ops is 128
KEYS = Keys(NS)


# -- keys (docs/design.md "Key schema") ------------------------------------------------


def result_key(sid: str, step: int, region: str) -> bytes:
    return KEYS.result(region, sid, step, "run", 1)


def task_key(sid: str, step: int, region: str, lease: int) -> bytes:
    return KEYS.task(region, f"{lease:x}", sid, step, "run", 1)


# -- values, as the engine writes them ----------------------------------------------------


def _result(sid: str, step: int, region: str, at: float, fence: int) -> bytes:
    return ResultPayload(
        ok=True, output=None, worker=f"{region}-0", region=region, started=at, ended=at + 0.0005, fence=fence
    ).to_json()


def _record(sid: str, txid: int, at: float, done: int, lease: int = 0) -> bytes:
    """A record with ``done`` steps done; the next one dispatched, or completed if all are."""
    steps, history = [], [{"at": round(at, 4), "event": "adopted", "txid": txid}]
    t = at
    for i, (name, region) in enumerate(STEPS):
        if i < done:
            steps.append(StepState(
                name=name, state="done", region=region, run=1, result=result_key(sid, i, region).decode(),
                started=t, ended=t + 0.003, regions=[region], dispatched_at=t,
            ))  # fmt: skip
            history += [
                {"at": round(t, 4), "event": "dispatched", "step": i, "region": region, "attempt": 1},
                {"at": round(t + 0.003, 4), "event": "step_done", "step": i, "region": region, "attempt": 1},
            ]
            t += 0.003
        elif i == done:
            steps.append(StepState(name=name, state="dispatched", region=region, run=1, started=t, regions=[region],
                                   dispatched_at=t, worker=f"{lease:x}"))  # fmt: skip
            history.append({"at": round(t, 4), "event": "dispatched", "step": i, "region": region, "attempt": 1})
        else:
            steps.append(StepState(name=name))
    final = done == len(STEPS)
    if final:
        history.append({"at": round(t, 4), "event": "completed"})
    return SagaRecord(
        id=sid, saga=SAGA, txid=txid, status="completed" if final else "running", steps=steps, created=at,
        updated=t, finished=t if final else None, step=min(done, len(STEPS) - 1), history=history, leader_term=3,
    ).to_json()  # fmt: skip


def _submission(sid: str, at: float) -> bytes:
    return encode_json({"saga": SAGA, "input": {"order": sid}, "trace": {}, "submitted": at}, what="submission")


def finished_ops(i: int, at: float) -> list[Op]:
    sid = f"{i:08x}-done"
    ops = [Op.put(KEYS.saga(sid), _record(sid, 1000 + i, at, done=3)), Op.put(KEYS.submit(sid), _submission(sid, at))]
    for step, (_, region) in enumerate(STEPS):
        ops.append(Op.put(result_key(sid, step, region), _result(sid, step, region, at, 2000 + i)))
    return ops


def inflight_ops(i: int, at: float, lease: int) -> list[Op]:
    sid = f"{i:08x}-live"
    ops = [
        Op.put(KEYS.saga(sid), _record(sid, 500_000 + i, at, done=1, lease=lease)), Op.put(KEYS.submit(sid), _submission(sid, at))
    ]
    ops.append(Op.put(result_key(sid, 0, "eu"), _result(sid, 0, "eu", at, 3000 + i)))
    task = TaskPayload(
        saga_id=sid, saga=SAGA, txid=500_000 + i, step=1, step_name="charge", kind="run", attempt=1, region="us",
        input={"order": sid}, outputs={"reserve": None}, timeout_s=None,
    )  # fmt: skip
    ops.append(Op.put(task_key(sid, 1, "us", lease), task.to_json(), lease=lease))
    return ops


def live_keys(i: int, lease: int) -> list[bytes]:
    """Every key ``inflight_ops(i, ...)`` writes."""
    sid = f"{i:08x}-live"
    return [KEYS.saga(sid), KEYS.submit(sid), result_key(sid, 0, "eu"), task_key(sid, 1, "us", lease)]


async def write_all(client: EtcdClient, ops: Iterator[list[Op]], concurrency: int = 16) -> int:
    """Every saga's ops in txns of at most OPS_PER_TXN ops, ``concurrency`` at a time."""
    queue: asyncio.Queue[list[Op] | None] = asyncio.Queue(maxsize=concurrency * 2)
    written = 0

    async def writer() -> None:
        nonlocal written
        while (batch := await queue.get()) is not None:
            await client.txn([], batch, idempotent=True)
            written += len(batch)

    tasks = [asyncio.create_task(writer()) for _ in range(concurrency)]
    batch: list[Op] = []
    for saga_ops in ops:
        if len(batch) + len(saga_ops) > OPS_PER_TXN:
            await queue.put(batch)
            batch = []
        batch += saga_ops
    if batch:
        await queue.put(batch)
    for _ in tasks:
        await queue.put(None)
    await asyncio.gather(*tasks)
    return written


# -- measuring ----------------------------------------------------------------------------


async def in_use(client: EtcdClient, endpoints: list[str]) -> tuple[int, int]:
    """(db size, in use) after compacting to now and defragmenting every member."""
    head = (await client.get("bench/none")).header.revision
    await client.compact(head, physical=True)
    defrag = [find_etcdctl(), "--endpoints", ",".join(endpoints), "--command-timeout=120s", "defrag"]
    await asyncio.to_thread(subprocess.run, defrag, check=True, capture_output=True)
    sizes = [await client.status(e) for e in endpoints]
    return max(s.db_size for s in sizes), max(s.db_size_in_use for s in sizes)


async def timed(fn: Callable[[], Awaitable[Any]], runs: int = 3) -> tuple[float, Any]:
    """The median wall time of ``runs`` calls, and the last result."""
    samples, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = await fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), out


def cli(endpoints: list[str], *args: str, runs: int = 3) -> float:
    """The median wall time of ``python -m whizorch ARGS`` (a fresh interpreter each run)."""
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "whizorch", *args, "--etcd", ",".join(endpoints), "--namespace", NS],
            capture_output=True, text=True, env=dict(os.environ, COLUMNS="200"),
        )  # fmt: skip
        samples.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"whizorch {' '.join(args)} failed: {proc.stderr}")
    return statistics.median(samples)


def python_startup() -> float:
    """The median time of a child interpreter importing whizorch's CLI and exiting."""
    samples = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import whizorch.cli._inspect"], check=True)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def rebuild(client: EtcdClient, *, trace: bool, timeout_s: float) -> tuple[float, int, int]:
    """Start an Orchestrator on the data and wait until it leads: (seconds, traced bytes
    it holds once leading (0 without ``trace``), RSS growth)."""
    gc.collect()
    rss0 = rss()
    if trace:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    async with Orchestrator(client, apps.app, namespace=NS, node_id="bench-scale", lease_ttl_s=10) as orch:
        await orch.wait_leader(timeout_s)
        took = time.perf_counter() - t0
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base if trace else 0
        grown = rss() - rss0
    if trace:
        tracemalloc.stop()
    return took, held, grown


def row(what: str, value: str, target: str = "") -> None:
    print(f"  {what:<58} {value:>16}   {target}", flush=True)


async def run(args: argparse.Namespace) -> None:
    n_done, n_live = (10_000, 1_000) if args.quick else (args.finished, args.inflight)
    print(f"bench_scale: {n_done:,} finished + {n_live:,} in-flight sagas, key schema v2, "
          f"{args.members} etcd member(s), {os.cpu_count()} CPUs", flush=True)  # fmt: skip
    async with LocalEtcdCluster(args.members, heartbeat_ms=100, election_ms=1000) as cluster:
        endpoints = list(cluster.endpoints)
        async with EtcdClient(endpoints, timeout_s=60.0, retry_deadline_s=60.0) as client:
            _, used0 = await in_use(client, endpoints)
            now = time.time() - 60.0  # finished a minute ago: inside the default retention (3600 s)

            t0 = time.perf_counter()
            await write_all(client, (finished_ops(i, now) for i in range(n_done)))
            seed_done = time.perf_counter() - t0
            _, used1 = await in_use(client, endpoints)

            print("\netcd bytes (backend in use after compaction + defrag)")
            row("per finished saga (record, submission, 3 results)", f"{(used1 - used0) / n_done:,.0f} B")
            row(f"seeding {n_done:,} finished sagas", f"{seed_done:.1f} s")


            lease = (await client.lease_grant(3600)).id  # a live worker's lease, for the bench's length
            caps = {"worker": "bench", "compliance": [], "cost": 0.0, "concurrency": 1000, "load": 0.0}
            for region in ("eu", "us", "ap"):  # the worker's registrations: every region is healthy
                await client.put(KEYS.region(region, lease), encode_json({**caps, "region": region}, what="caps"), lease=lease)
            t0 = time.perf_counter()
            await write_all(client, (inflight_ops(i, now, lease) for i in range(n_live)))
            seed_live = time.perf_counter() - t0
            size2, used2 = await in_use(client, endpoints)
            row("per in-flight saga (record, submission, 1 result, 1 task)", f"{(used2 - used1) / n_live:,.0f} B")
            row(f"seeding {n_live:,} in-flight sagas", f"{seed_live:.1f} s")
            row("db size / in use, all seeded", f"{size2 / 2**20:,.1f} / {used2 / 2**20:,.1f} MiB",
                "quota: 2 GiB default, 8 GiB suggested max")  # fmt: skip

            print("\nCLI (median of 3)")
            startup = python_startup()
            row("python -c 'import whizorch.cli._inspect' (startup alone)", f"{startup:.2f} s")
            row("whizorch sagas list --json (child process)", f"{cli(endpoints, 'sagas', 'list', '--json'):.2f} s", "<= 1 s")
            row("whizorch sagas list --status failed (none match; --scan bound)",
                f"{cli(endpoints, 'sagas', 'list', '--status', 'failed', '--json'):.2f} s", "<= 1 s")  # fmt: skip
            row("whizorch status --json (child process)", f"{cli(endpoints, 'status', '--json'):.2f} s", "<= 1 s")
            target = Target(client, KEYS)
            took, _ = await timed(lambda: scan_sagas(client, KEYS, limit=100))
            row("sagas list, in process (scan_sagas limit=100)", f"{took * 1000:.0f} ms", "<= 1 s")
            took, page = await timed(lambda: scan_sagas(client, KEYS, limit=100, status="failed", max_scan=5_000))
            row(f"  --status failed, in process ({page.scanned:,} scanned)", f"{took * 1000:.0f} ms", "<= 1 s")
            took, doc = await timed(lambda: _status(target))
            row("status, in process", f"{took * 1000:.0f} ms", "<= 1 s")
            s = doc["sagas"]
            print(f"    status sagas: total {s['total']:,}, exact {s['exact']}, scanned {s['scanned']:,}; "
                  f"tasks {sum(r['tasks'] for r in doc['regions']):,}")  # fmt: skip

            print("\nnamespace read at one revision")
            took, (kvs, _) = await timed(lambda: read_namespace(client, f"{NS}/".encode(), page_size=args.page_size), 1)
            row(f"read_namespace, pages of {args.page_size:,} ({len(kvs):,} keys)", f"{took:.2f} s")
            del kvs
            took, res = await timed(lambda: client.get(f"{NS}/", prefix=True), 1)
            row(f"one Range ({len(res.kvs):,} keys)", f"{took:.2f} s")
            del res

            if not args.no_rebuild:
                print("\nleader rebuild (Orchestrator start to is_leader; engine of this checkout)")
                took, _, grown = await rebuild(client, trace=False, timeout_s=args.rebuild_timeout)
                row(f"rebuild, {n_done:,} finished + {n_live:,} in flight", f"{took:.2f} s", "<= 5 s")
                row("  RSS growth of this process while leading", f"{grown / 2**20:,.0f} MiB")
                _, held_all, _ = await rebuild(client, trace=True, timeout_s=args.rebuild_timeout)
                # the in-flight sagas removed again: what the leader holds for the finished alone
                deletes = ([Op.delete(k) for k in live_keys(i, lease)] for i in range(n_live))
                await write_all(client, deletes)
                _, held_done, _ = await rebuild(client, trace=True, timeout_s=args.rebuild_timeout)
                row("leader memory per finished saga (tracemalloc)", f"{held_done / n_done:,.0f} B")
                row("leader memory per in-flight saga (tracemalloc)", f"{(held_all - held_done) / n_live:,.0f} B")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finished", type=int, default=100_000)
    parser.add_argument("--inflight", type=int, default=10_000)
    parser.add_argument("--members", type=int, default=1, help="etcd members (default 1)")
    parser.add_argument("--page-size", type=int, default=2000)
    parser.add_argument("--rebuild-timeout", type=float, default=300.0)
    parser.add_argument("--no-rebuild", action="store_true", help="skip the Orchestrator rebuilds")
    parser.add_argument("--quick", action="store_true", help="10,000 finished + 1,000 in flight")
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
