"""Scale: a shard's takeover with 10,000 sagas in flight, 100,000 and 300,000 retained.

Seeds a local etcd (1 member by default, ``--members 3`` for a cluster) with sagas as
key schema 3 leaves them (``scale_seed.py``: records, ``input/``, the in-flight index
``live/<shard>/`` and the retention index ``done/<shard>/``, no ``submit/`` key for an
adopted saga, ``<ns>/meta``), the in-flight ones split over the namespace's shards
(``--shards``, default 4), then, for each retained count (``--retained``, default
100,000 and 300,000: the finished sagas are added between the two):

- a fresh orchestrator's takeover of every shard, ``--runs`` times (the median shown):
  from ``Orchestrator`` start to each shard's election won (its election key's watch
  event) and to each shard leading (its ``leader`` event), and to every shard leading;
  the writes etcd took meanwhile, and the CPU of this process and of etcd;
- one shard's takeover alone (the other shards' elections held by another session, as
  when one shard moves to another orchestrator), as many times, interleaved;
- the leader's memory per saga in flight (tracemalloc, one run of its own) and its RSS;
- etcd bytes per finished and per in-flight saga (backend in use after compaction and
  defragmentation), and ``whizorch sagas list`` / ``whizorch status`` timings (first
  count only; ``--no-cli`` skips them).

Then the issue's figure: the takeover at each count next to its target (<= 2 s to
leading) and the ratio of the two counts (target: within 20%), of the wall times
(median, and least: the run the shared machine disturbed least) and of the CPU the
takeover cost (this process + etcd: what the work is, whatever the load). Figures are printed,
never asserted. ``--quick``: 1,000 in flight, 10,000 and 30,000 retained (about a
minute); the default run takes about 5 minutes on a 2-core machine.

    python bench/bench_scale.py [--quick] [--shards 4] [--inflight 10000] [--retained 100000,300000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs

sys.path.insert(0, str(Path(__file__).parent))
import bench_apps as apps
from scale_seed import Seeder, live_id, write_all

from whizorch import EtcdClient
from whizorch.cli._inspect import Target, _status
from whizorch.coord import Election, Session
from whizorch.etcd import EventType
from whizorch.saga import LeadershipChanged, Orchestrator, shard_of
from whizorch.saga._keys import Keys
from whizorch.saga._listing import scan_sagas
from whizorch.testing import LocalEtcdCluster, find_etcdctl

NS = "whizorch"
KEYS = Keys(NS)
TAKEOVER_TARGET_S = 2.0
SAME_WITHIN = 0.20


def load() -> str:
    """The 1, 5 and 15 minute load averages (the machine is shared: say how busy it was)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def row(what: str, value: str, target: str = "") -> None:
    print(f"  {what:<60} {value:>16}   {target}", flush=True)


# -- measuring ----------------------------------------------------------------------------


async def in_use(client: EtcdClient, endpoints: list[str]) -> tuple[int, int]:
    """(db size, in use) after compacting to now and defragmenting every member."""
    head = (await client.get("bench/none")).header.revision
    await client.compact(head, physical=True)
    defrag = [str(find_etcdctl()), "--endpoints", ",".join(endpoints), "--command-timeout=300s", "defrag"]
    await asyncio.to_thread(lambda: subprocess.run(defrag, check=True, capture_output=True))
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


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@attrs.frozen
class Takeover:
    """One fresh orchestrator's start, until it leads every shard."""

    total_s: float
    """Start to every shard leading."""
    won_s: dict[int, float]
    """Start to each shard's election key (campaign won: no other candidate)."""
    leading_s: dict[int, float]
    """Start to each shard's ``leader`` event (its takeover done)."""
    revisions: int
    """etcd revisions from start to leading: the node's own keys (its membership, one
    election key per shard) and whatever the takeover wrote."""
    cost: Cost
    """Wall time to every shard leading, and the CPU of this process (the leader's, and
    the watch's) and of etcd meanwhile."""
    held: int
    """tracemalloc: bytes allocated and still held once leading (0 when not traced)."""
    rss_growth: int


async def takeover(client: EtcdClient, cluster: LocalEtcdCluster, *, trace: bool, timeout_s: float) -> Takeover:
    """Start an Orchestrator on the data and wait until it leads every shard."""
    gc.collect()
    rss0 = rss()
    won: dict[int, float] = {}
    leading: dict[int, float] = {}
    rev0 = (await client.get(KEYS.meta)).header.revision
    head = len(KEYS.prefix("leader"))

    def on_event(ev: object) -> None:
        if isinstance(ev, LeadershipChanged) and ev.leading and ev.shard is not None:
            leading.setdefault(ev.shard, time.perf_counter() - t0)

    async def elections() -> None:
        async with client.watch(KEYS.prefix("leader"), prefix=True, start_revision=rev0 + 1) as w:
            async for ev in w:
                if ev.type is EventType.PUT:
                    shard = int(ev.kv.key[head:].partition(b"/")[0])
                    won.setdefault(shard, time.perf_counter() - t0)

    if trace:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    watcher = asyncio.ensure_future(elections())
    await asyncio.sleep(0.05)  # ok: let the watch be created before the orchestrator starts
    etcd0, cpu0 = etcd_cpu(cluster), time.process_time()
    t0 = time.perf_counter()
    try:
        async with Orchestrator(
            client, apps.scale_app, namespace=NS, node_id="bench-scale", lease_ttl_s=10, on_event=on_event
        ) as orch:
            await orch.wait_leader(timeout_s)
            total = time.perf_counter() - t0
            cost = Cost(total, time.process_time() - cpu0, etcd_cpu(cluster) - etcd0)
            rev1 = (await client.get(KEYS.meta)).header.revision
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - base if trace else 0
            grown = rss() - rss0
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        if trace:
            tracemalloc.stop()
    return Takeover(total, won, leading, rev1 - rev0, cost, held, grown)


def pid_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process (Linux /proc), 0 when it is gone."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@attrs.frozen
class Cost:
    """One takeover: wall time to leading, and the CPU it took from this process (the
    orchestrator) and from etcd's members."""

    wall_s: float
    cpu_s: float
    etcd_cpu_s: float

    @property
    def all_cpu_s(self) -> float:
        return self.cpu_s + self.etcd_cpu_s


async def one_shard(client: EtcdClient, cluster: LocalEtcdCluster, shard: int, shards: int, timeout_s: float) -> Cost:
    """A fresh orchestrator's start to leading ``shard`` while another session holds
    every other shard's election (so this node takes over that one shard alone, as a
    shard moving to another orchestrator does)."""
    led = asyncio.Event()
    async with Session(client, ttl_s=30) as holder:
        held = [Election(holder, KEYS.shard_leader(k)) for k in range(shards) if k != shard]
        for e in held:
            await e.campaign("bench-holder")

        def on_event(ev: object) -> None:
            if isinstance(ev, LeadershipChanged) and ev.leading and ev.shard == shard:
                led.set()

        etcd0, cpu0 = etcd_cpu(cluster), time.process_time()
        t0 = time.perf_counter()
        async with Orchestrator(
            client, apps.scale_app, namespace=NS, node_id="bench-scale", lease_ttl_s=10, on_event=on_event
        ):
            await asyncio.wait_for(led.wait(), timeout_s)
            cost = Cost(time.perf_counter() - t0, time.process_time() - cpu0, etcd_cpu(cluster) - etcd0)
        for e in held:
            await e.resign()
    return cost


def etcd_cpu(cluster: LocalEtcdCluster) -> float:
    return sum(pid_cpu_s(m.pid) for m in cluster.members)


def verdict(wall: float) -> str:
    return f"<= {TAKEOVER_TARGET_S:.0f} s: {'met' if wall <= TAKEOVER_TARGET_S else 'MISSED'}"


def runs_text(costs: list[Cost]) -> str:
    return f"(runs: {', '.join(f'{c.wall_s:.2f}' for c in costs)}; CPU: this process {statistics.median(c.cpu_s for c in costs):.2f} s, " \
        f"etcd {statistics.median(c.etcd_cpu_s for c in costs):.2f} s)"


async def measure_takeovers(
    client: EtcdClient, cluster: LocalEtcdCluster, args: argparse.Namespace, n_live: int, n_done: int
) -> dict[str, list[Cost]]:
    """Print the takeover figures at one retained count: every shard by a fresh
    orchestrator, and shard 0 alone, ``--runs`` of each, interleaved."""
    every: list[Takeover] = []
    alone: list[Cost] = []
    for _ in range(args.runs):
        every.append(await takeover(client, cluster, trace=False, timeout_s=args.timeout))
        alone.append(await one_shard(client, cluster, 0, args.shards, args.timeout))
    print(f"\ntakeover: a fresh orchestrator, {args.shards} shards, {n_live:,} in flight, {n_done:,} finished retained "
          f"(median of {len(every)}; load {load()})")  # fmt: skip
    for k in range(args.shards):
        won = statistics.median(r.won_s.get(k, float("nan")) for r in every)
        led = statistics.median(r.leading_s.get(k, float("nan")) for r in every)
        live = sum(1 for i in range(n_live) if shard_of(live_id(i), args.shards) == k)
        row(f"shard {k} ({live:,} in flight): election won / leading", f"{won:.2f} / {led:.2f} s", f"takeover {led - won:.2f} s")
    costs = [r.cost for r in every]
    total = statistics.median(c.wall_s for c in costs)
    row("start to every shard leading", f"{total:.2f} s", f"{verdict(total)}  {runs_text(costs)}")
    row("  etcd writes meanwhile", f"{statistics.median(r.revisions for r in every):.0f}",
        f"its membership + {args.shards} election keys = {args.shards + 1}; the rest: the takeover's")  # fmt: skip
    live0 = sum(1 for i in range(n_live) if shard_of(live_id(i), args.shards) == 0)
    one = statistics.median(c.wall_s for c in alone)
    row(f"shard 0 alone ({live0:,} in flight; the others held elsewhere)", f"{one:.2f} s", f"{verdict(one)}  {runs_text(alone)}")
    traced = await takeover(client, cluster, trace=True, timeout_s=args.timeout)
    row("leader memory per saga in flight (tracemalloc, all it holds)", f"{traced.held / max(1, n_live):,.0f} B",
        f"{traced.held / 2**20:,.1f} MiB in all; RSS +{traced.rss_growth / 2**20:,.0f} MiB")  # fmt: skip
    return {f"every shard ({n_live:,} in flight)": costs, f"one shard alone ({live0:,} in flight)": alone}


async def run(args: argparse.Namespace) -> None:
    n_live = 1_000 if args.quick else args.inflight
    levels = sorted((10_000, 30_000) if args.quick else args.retained)
    seeder = Seeder(KEYS, args.shards)
    print(f"bench_scale: {n_live:,} in flight over {args.shards} shards; {', '.join(f'{n:,}' for n in levels)} finished "
          f"retained; key schema 3, {args.members} etcd member(s), {os.cpu_count()} CPUs; load {load()}", flush=True)  # fmt: skip
    extra = ["--quota-backend-bytes=8589934592"]  # 300,000 retained sagas take more than the 2 GiB default
    async with LocalEtcdCluster(args.members, heartbeat_ms=100, election_ms=1000, extra_args=extra) as cluster:
        endpoints = list(cluster.endpoints)
        async with EtcdClient(endpoints, timeout_s=60.0, retry_deadline_s=60.0) as client:
            await client.txn([], seeder.namespace_ops())
            _, used0 = await in_use(client, endpoints)
            now = time.time() - 60.0  # finished a minute ago: inside the default retention (3600 s)

            lease = (await client.lease_grant(3600)).id  # a live worker's lease, for the bench's length
            await client.txn([], seeder.worker_ops(lease))
            t0 = time.perf_counter()
            await write_all(client, (seeder.in_flight(i, now, lease) for i in range(n_live)))
            seed_live = time.perf_counter() - t0
            _, used1 = await in_use(client, endpoints)
            print("\netcd bytes (backend in use after compaction + defrag)")
            row("per in-flight saga (record, input, result, task, live/ entry)", f"{(used1 - used0) / n_live:,.0f} B")
            row(f"seeding {n_live:,} in-flight sagas", f"{seed_live:.1f} s")

            seeded = 0
            figures: dict[int, dict[str, list[Cost]]] = {}
            for level in levels:
                t0 = time.perf_counter()
                await write_all(client, (seeder.finished(i, now) for i in range(seeded, level)))
                took = time.perf_counter() - t0
                used_before = used1
                size, used1 = await in_use(client, endpoints)
                print(f"\n{level:,} finished retained")
                row("per finished saga (record, input, 3 results, done/ entry)",
                    f"{(used1 - used_before) / (level - seeded):,.0f} B")  # fmt: skip
                row(f"seeding {level - seeded:,} finished sagas", f"{took:.1f} s")
                row("db size / in use, all seeded", f"{size / 2**20:,.1f} / {used1 / 2**20:,.1f} MiB")
                seeded = level
                if not args.no_cli and level == levels[0]:
                    await cli_figures(client, endpoints)
                figures[level] = await measure_takeovers(client, cluster, args, n_live, level)

            print(f"\nissue 17: takeover with {n_live:,} in flight over {args.shards} shards (load {load()})")
            for what in figures[levels[0]]:
                for level in levels:
                    wall = statistics.median(c.wall_s for c in figures[level][what])
                    row(f"{level:,} retained: {what}", f"{wall:.2f} s", verdict(wall))
                if len(levels) > 1:
                    lo, hi = figures[levels[0]][what], figures[levels[-1]][what]
                    for name, pick in (("wall, median", lambda c: c.wall_s), ("wall, least", lambda c: c.wall_s),
                                       ("CPU, this process + etcd", lambda c: c.all_cpu_s)):  # fmt: skip
                        agg = min if "least" in name else statistics.median
                        ratio = agg(map(pick, hi)) / agg(map(pick, lo))
                        row(f"  {levels[-1]:,} vs {levels[0]:,} retained ({name})", f"{ratio:.2f}x",
                            f"within {SAME_WITHIN:.0%}: {'met' if abs(ratio - 1) <= SAME_WITHIN else 'MISSED'}")  # fmt: skip


async def cli_figures(client: EtcdClient, endpoints: list[str]) -> None:
    print("\nCLI (median of 3)")
    row("whizorch sagas list --json (child process)", f"{cli(endpoints, 'sagas', 'list', '--json'):.2f} s", "<= 1 s")
    row("whizorch sagas list --status failed (none match; --scan bound)",
        f"{cli(endpoints, 'sagas', 'list', '--status', 'failed', '--json'):.2f} s", "<= 1 s")  # fmt: skip
    row("whizorch status --json (child process)", f"{cli(endpoints, 'status', '--json'):.2f} s", "<= 1 s")
    took, _ = await timed(lambda: scan_sagas(client, KEYS, limit=100))
    row("sagas list, in process (scan_sagas limit=100)", f"{took * 1000:.0f} ms", "<= 1 s")
    took, doc = await timed(lambda: _status(Target(client, KEYS)))
    row("status, in process", f"{took * 1000:.0f} ms", "<= 1 s")
    s = doc["sagas"]
    print(f"    status sagas: total {s['total']:,}, exact {s['exact']}, scanned {s['scanned']:,}")


def _counts(text: str) -> list[int]:
    try:
        return [int(n.replace("_", "")) for n in text.split(",") if n]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of counts, e.g. 100000,300000") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inflight", type=int, default=10_000, help="sagas in flight (default 10,000)")
    parser.add_argument("--retained", type=_counts, default=[100_000, 300_000],
                        help="finished sagas retained, one takeover figure each (default 100000,300000)")  # fmt: skip
    parser.add_argument("--shards", type=int, default=4, help="the namespace's shards (default 4)")
    parser.add_argument("--members", type=int, default=1, help="etcd members (default 1)")
    parser.add_argument("--runs", type=int, default=3, help="takeovers per retained count (default 3)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a takeover may take before the bench gives up")
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI timings")
    parser.add_argument("--quick", action="store_true", help="1,000 in flight; 10,000 and 30,000 retained")
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
