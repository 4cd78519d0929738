"""The web console's figures (issue 16), each printed next to its target.

Seeds a local etcd with 100,000 finished + 10,000 in-flight sagas the way
bench_scale.py does (``scale_seed.py``'s Seeder, 4 shards), starts ``whizorch console`` as a process of
its own, and measures:

- the console's first read of the namespace (it then keeps current from one watch);
- the list page (newest first, and failed only) and a saga's page, served (HTTP);
- from an etcd commit to the change shown in a real browser (Debian's chromium via
  Playwright: a saga page open, its record rewritten, the time until the page shows it);
- 50 live connections (Server-Sent-Event streams, as the pages open them) held idle:
  the console's CPU over 20 s, and its memory (RSS) before and after.

Figures are printed, never asserted. ``--quick``: 10,000 + 1,000 sagas.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from scale_seed import Seeder, write_all

from whizorch import EtcdClient
from whizorch.saga._keys import Keys
from whizorch.testing import LocalEtcdCluster

NS = "whizorch"
KEYS = Keys(NS)
SHARDS = 4
RUNS = 100
"""Requests per page figure (a p99 of 30 would be their slowest)."""
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def row(what: str, value: str, target: str = "") -> None:
    print(f"  {what:<62} {value:>18}   {target}", flush=True)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timed_get(http: httpx.AsyncClient, paths: list[str], runs: int) -> list[float]:
    """``runs`` requests, one at a time, cycling through ``paths``."""
    out = []
    for i in range(runs):
        path = paths[i % len(paths)]
        t0 = time.perf_counter()
        res = await http.get(path)
        out.append(time.perf_counter() - t0)
        assert res.status_code == 200, (path, res.status_code)
    return out


async def browser_lag(url: str, client: EtcdClient, sid: str, samples: int) -> list[float] | str:
    """Commit -> shown, in chromium: the saga page open, the record's leader_term rewritten."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        return "playwright not installed"
    if not Path(CHROMIUM).exists():  # noqa: ASYNC240
        return f"no {CHROMIUM}"
    key = KEYS.saga(sid)
    raw = json.loads((await client.get(key)).kvs[0].value)
    lags = []
    async with async_playwright() as pw:
        ctx = await pw.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="bench-console-"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        page = await ctx.new_page()
        await page.goto(url + f"sagas/{sid}")
        await page.locator("#live", has_text="live").wait_for(timeout=30_000)
        for i in range(samples):
            raw["leader_term"] = 900_000 + i
            await client.put(key, json.dumps(raw, separators=(",", ":")))
            committed = time.perf_counter()
            # a locator wait (the page's CSP allows no eval, so no wait_for_function)
            await page.locator(".head", has_text=f"leader term {900_000 + i}").wait_for(timeout=30_000)
            lags.append(time.perf_counter() - committed)
            await asyncio.sleep(0.3)  # ok: samples apart, so each is one change (not coalesced with the last)
        await ctx.close()
    return lags


async def run(args: argparse.Namespace) -> None:
    n_done, n_live = (10_000, 1_000) if args.quick else (args.finished, args.inflight)
    print(f"bench_console: {n_done:,} finished + {n_live:,} in-flight sagas, 1 etcd member, {os.cpu_count()} CPUs",
          flush=True)  # fmt: skip
    async with LocalEtcdCluster(1, heartbeat_ms=100, election_ms=1000) as cluster:
        endpoints = list(cluster.endpoints)
        async with EtcdClient(endpoints, timeout_s=60.0, retry_deadline_s=60.0) as client:
            now = time.time() - 60.0
            t0 = time.perf_counter()
            seeder = Seeder(KEYS, SHARDS)
            await client.txn([], seeder.namespace_ops())
            await write_all(client, (seeder.finished(i, now) for i in range(n_done)))
            lease = (await client.lease_grant(3600)).id
            await client.txn([], seeder.worker_ops(lease))
            await write_all(client, (seeder.in_flight(i, now, lease) for i in range(n_live)))
            print(f"  seeded in {time.perf_counter() - t0:.1f} s", flush=True)

            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "whizorch", "console", "--etcd", ",".join(endpoints), "--namespace", NS,
                "--bind", "127.0.0.1:0", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            assert proc.stdout is not None
            try:
                started = time.perf_counter()
                url = None
                while url is None:
                    line = (await asyncio.wait_for(proc.stdout.readline(), 600)).decode()
                    assert line, "the console ended"
                    found = re.search(r"(http://127\.0\.0\.1:\d+/).*; ([\d,]+) sagas read in ([\d.]+)s", line)
                    if found:
                        url, read_s = found.group(1), float(found.group(3))
                print("\nconsole start")
                row(f"first read of the namespace ({found.group(2)} sagas)", f"{read_s:.2f} s")  # type: ignore[union-attr]
                row("process start to serving", f"{time.perf_counter() - started:.2f} s")
                row("memory (RSS) with the index built", f"{rss(proc.pid) / 2**20:,.0f} MiB")

                print(f"\npages served (HTTP, one at a time, median / p99 of {RUNS})")
                done_pages = [f"/sagas/{i * 997 % n_done:08x}-done" for i in range(RUNS)]  # 100 different sagas
                live_pages = [f"/sagas/{i * 97 % n_live:08x}-live" for i in range(RUNS)]
                async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                    await http.get("/sagas")  # templates compiled
                    for label, paths, target in (
                        ("list page, newest first (50 rows)", ["/sagas"], "<= 300 ms"),
                        ("list page, failed only (none: the counters know)", ["/sagas?status=failed"], "<= 300 ms"),
                        ("list page, region ap, failed (a full walk)", ["/sagas?region=ap&status=failed"], "<= 300 ms"),
                        ("list page, running only, 200 rows", ["/sagas?status=running&limit=200"], "<= 300 ms"),
                        ("a saga's page (finished, 3 steps; 100 sagas)", done_pages, "<= 100 ms"),
                        ("a saga's page (in flight; 100 sagas)", live_pages, "<= 100 ms"),
                        ("overview", ["/"], ""),
                    ):
                        took = await timed_get(http, paths, RUNS)
                        row(label, f"{statistics.median(took) * 1000:.0f} / {pct(took, 99) * 1000:.0f} ms", target)

                    print(f"\ncommit -> shown in chromium ({args.samples} changes, one saga page open)")
                    lags = await browser_lag(url, client, f"{1:08x}-live", args.samples)
                    if isinstance(lags, str):
                        row("skipped", lags)
                    else:
                        row("median / p99 / max", f"{statistics.median(lags) * 1000:.0f} / {pct(lags, 99) * 1000:.0f} / "
                            f"{max(lags) * 1000:.0f} ms", "p99 <= 1 s")  # fmt: skip

                    print(f"\n{args.connections} live connections (SSE streams, as pages open them), idle")
                    before = rss(proc.pid)
                    streams = []
                    for i in range(args.connections):
                        topic = "overview" if i % 3 == 0 else ("sagas" if i % 3 == 1 else f"saga/{i:08x}-done")
                        cm = http.stream("GET", f"/events?topic={topic}")
                        streams.append((cm, await cm.__aenter__()))
                    await asyncio.sleep(2)  # ok: let the streams settle
                    c0, w0 = cpu_s(proc.pid), time.perf_counter()
                    await asyncio.sleep(args.idle_s)  # ok: measuring idle CPU
                    cpu = (cpu_s(proc.pid) - c0) / (time.perf_counter() - w0)
                    after = rss(proc.pid)
                    row(f"console CPU over {args.idle_s:g} s idle", f"{cpu * 100:.1f} % of a core", "< 10 %")
                    row("memory (RSS) before / with the connections",
                        f"{before / 2**20:,.0f} / {after / 2**20:,.0f} MiB", "bounded")  # fmt: skip
                    row("memory per connection", f"{(after - before) / args.connections / 1024:,.1f} KiB")
                    for cm, _ in streams:
                        await cm.__aexit__(None, None, None)
            finally:
                proc.terminate()
                await proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finished", type=int, default=100_000)
    parser.add_argument("--inflight", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--samples", type=int, default=40, help="changes timed in the browser")
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true", help="10,000 finished + 1,000 in flight")
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
