"""Saga benchmark: latency, throughput and failover times, in one run.

One local 3-member etcd cluster; two orchestrator candidates and one worker per region
(eu, us, ap) as separate processes (``python -m whizorch orchestrator|worker``); this
process submits. The saga has 3 steps pinned to 3 regions, with no-op handlers.

Prints:
* 3-step saga end-to-end latency p50/p99 (sequential, one in flight), and etcd
  commits per step (store revisions consumed / steps),
* sagas/s and steps/s with ``--inflight`` (default 200) sagas in flight,
* leader failover: SIGKILL the leader process -> the other candidate leads (from its
  own event), and -> the first saga submitted after the kill completes,
* region failover: SIGKILL the "us" worker during a stream of sagas -> the first
  failover recorded, and its delay past the worker lease TTL.

Targets (issue 10; 2-core machine): 3-step p50 <= 15 ms, p99 <= 25 ms; >= 1,000 steps/s
with 200 in flight; <= 1.5 etcd commits per step under load; <= 7 commits in series on
one 3-step saga; <= 1.5 ms of Python CPU per step summed over every role process (from
/proc: user + system time); each failover <= lease TTL + 1 s. The rebuild at scale is
bench_scale.py's, the WAN figures bench_wan.py's. Figures, not a pass/fail test.

    python bench/bench_saga.py [--n 300] [--inflight 200] [--duration 10] [--ttl 2] [--observe] [--shards N]

``--shards N``: the namespace the orchestrators create has N shards (default: the
engine's, 4, shared by the two orchestrators); ``--shards 1`` is one leader, as before
shards (bench_regress.py compares it with the engine before them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

from whizorch import EtcdClient
from whizorch.observe import Metrics, Tracing
from whizorch.saga import SagaClient
from whizorch.testing import LocalEtcdCluster

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_apps import three  # noqa: E402


def load() -> str:
    """The 1, 5 and 15 minute load averages (the machine is shared: say how busy it was)."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


class Proc:
    """A whizorch role process whose JSON-line events are collected with arrival times."""

    def __init__(self, args: list[str], endpoints: str) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "whizorch", *args, "--etcd", endpoints, "--app", "bench_apps:app"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
        )
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._reader = asyncio.get_running_loop().run_in_executor(None, self._read)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.append((time.monotonic(), json.loads(line)))
            except ValueError:
                pass

    async def wait_event(self, kind: str, *, after: float = 0.0, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, ev in self.events:
                if ev.get("event") == kind and at >= after:
                    return at
            await asyncio.sleep(0.005)  # ok: polling another process's output
        raise TimeoutError(f"no {kind} event")

    def leads(self) -> bool:
        """Whether the process leads a shard now, by its last leader/follower event of
        each shard (an orchestrator started with ``--events``)."""
        state: dict[object, bool] = {}
        for _, ev in list(self.events):
            if ev.get("event") in ("leader", "follower"):
                state[ev.get("shard")] = ev.get("event") == "leader"
        return any(state.values())

    def cpu_s(self) -> float:
        """User + system CPU seconds the process has used (Linux /proc)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    async def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(self.proc.wait), 10)
            except TimeoutError:
                self.kill()
        await self._reader
        if self.proc.stdout is not None:
            self.proc.stdout.close()


async def run(n: int, inflight: int, duration: float, ttl: int, observe: bool, shards: int | None = None) -> None:
    # --observe: every role serves /metrics and runs the Tracing middleware (no SDK:
    # what enabling them costs without an exporter); the client submits through both
    extra = ["--metrics-bind", "127.0.0.1:0", "--tracing"] if observe else []
    sharding = ["--shards", str(shards)] if shards is not None else []
    async with LocalEtcdCluster(3, heartbeat_ms=100, election_ms=1000) as cluster:
        endpoints = ",".join(cluster.endpoints)
        procs: list[Proc] = []
        try:
            orch = [
                Proc(["orchestrator", "--events", "--id", f"orch-{i}", "--lease-ttl", str(ttl), *sharding, *extra], endpoints)
                for i in range(2)
            ]
            procs += orch
            workers = {
                r: Proc(["worker", "--region", r, "--id", f"w-{r}", "--lease-ttl", str(ttl), "--concurrency", "256", *extra], endpoints)
                for r in ("eu", "us", "ap")
            }
            procs += list(workers.values())
            for w in workers.values():
                await w.wait_event("worker_ready")
            while not any(o.leads() for o in orch):
                await asyncio.sleep(0.01)  # ok: waiting for the first election
            print(f"etcd {'.'.join(map(str, cluster.version))}, 3 members; 2 orchestrators, workers in eu/us/ap; ttl {ttl}s; "
                  f"shards: {shards or 'default'}; middleware: {'metrics + tracing' if observe else 'none'}; "
                  f"load {load()}")

            async with EtcdClient(cluster.endpoints) as client:
                middleware: list[Any] = [Tracing(), Metrics()] if observe else []
                sc = SagaClient(client, namespace="whizorch", middleware=middleware)
                for i in range(20):  # warm-up
                    await sc.execute(three, {"i": i}, timeout_s=30)

                # -- latency, one in flight --------------------------------------------
                lat: list[float] = []
                rev0 = (await client.get("whizorch/none")).header.revision
                for i in range(n):
                    t0 = time.perf_counter()
                    res = await sc.execute(three, {"i": i}, timeout_s=30)
                    lat.append((time.perf_counter() - t0) * 1000)
                    assert res.regions == ["eu", "us", "ap"], res.regions
                rev1 = (await client.get("whizorch/none")).header.revision
                print()
                print(f"3-step saga, 3 regions, one in flight (n={n}):")
                print(f"  p50 {statistics.median(lat):.1f} ms   p99 {pct(lat, 99):.1f} ms   (target p50 <= 15 ms, p99 <= 25 ms)")
                print(f"  etcd commits per saga, all in series: {(rev1 - rev0) / n:.2f}   (target <= 7; "
                      "submission, adoption + dispatch, per step its result and the leader's next write)")
                print(f"  etcd commits per step, one in flight: {(rev1 - rev0) / (3 * n):.2f}")

                # -- throughput ----------------------------------------------------------
                done = 0
                stop_at = time.monotonic() + duration

                async def pump() -> None:
                    nonlocal done
                    while time.monotonic() < stop_at:
                        await sc.execute(three, None, timeout_s=60)
                        done += 1

                t0 = time.monotonic()
                rev0 = (await client.get("whizorch/none")).header.revision
                cpu0 = sum(p.cpu_s() for p in procs)
                each0 = [p.cpu_s() for p in procs]
                own0 = time.process_time()
                await asyncio.gather(*(pump() for _ in range(inflight)))
                took = time.monotonic() - t0
                cpu1 = sum(p.cpu_s() for p in procs)
                each = [(p.cpu_s() - c0) / max(1, 3 * done) * 1000 for p, c0 in zip(procs, each0, strict=True)]
                own1 = time.process_time()
                rev1 = (await client.get("whizorch/none")).header.revision
                steps = 3 * done
                print()
                print(f"throughput with {inflight} sagas in flight for {duration:.0f}s:")
                print(f"  {done / took:.0f} sagas/s   {steps / took:.0f} steps/s   (target >= 1,000 steps/s)")
                print(f"  etcd commits per step under load: {(rev1 - rev0) / steps:.2f}   (target <= 1.5)")
                print(f"  Python CPU per step, orchestrators + workers: {(cpu1 - cpu0) / steps * 1000:.2f} ms   (target <= 1.5 ms);"
                      f" the submitting client: {(own1 - own0) / steps * 1000:.2f} ms")
                print("  Python CPU per step, each process: " + ", ".join(
                    [f"orch-{i} {ms:.2f} ms" for i, ms in enumerate(each[:2])] + [f"w-{r} {ms:.2f} ms" for r, ms in zip(workers, each[2:], strict=True)]
                ))

                # -- leader failover -----------------------------------------------------
                # the process leading now: a shard may have changed hands as both
                # orchestrators started (the one that won first hands it over)
                leader = next(o for o in orch if o.leads())
                other = orch[1] if leader is orch[0] else orch[0]
                killed_at = time.monotonic()
                leader.kill()
                submitted = asyncio.ensure_future(sc.execute(three, {"after": "kill"}, timeout_s=60))
                led_at = await other.wait_event("leader", after=killed_at, timeout=60)
                await submitted
                completed_at = time.monotonic()
                print()
                print("leader failover (SIGKILL of the leader process):")
                print(f"  new leader after {led_at - killed_at:.2f} s; first saga done {completed_at - killed_at:.2f} s"
                      f"   (target <= ttl + 1 = {ttl + 1} s)")

                # -- region failover -----------------------------------------------------
                stream_stop = asyncio.Event()
                results: list[Any] = []

                async def stream() -> None:
                    while not stream_stop.is_set():
                        results.append(await sc.execute(three, None, timeout_s=60, raise_on_failure=False))

                streams = [asyncio.ensure_future(stream()) for _ in range(20)]
                await asyncio.sleep(0.5)  # ok: let sagas flow before the region dies
                killed_at = time.monotonic()
                workers["us"].kill()
                fo_at = await other.wait_event("failover", after=killed_at, timeout=60)
                await asyncio.sleep(0.5)  # ok: let failed-over sagas finish
                stream_stop.set()
                await asyncio.gather(*streams)
                flagged = sum(1 for r in results if r.failed_over)
                ok = sum(1 for r in results if r.ok)
                print()
                print("region failover (SIGKILL of the only 'us' worker):")
                print(f"  first failover recorded after {fo_at - killed_at:.2f} s   (target <= ttl + 1 = {ttl + 1} s)")
                print(f"  sagas in the stream: {len(results)}, completed {ok}, flagged failed-over {flagged}")
        finally:
            for p in procs:
                p.kill()
            for p in procs:
                await p.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="sequential sagas for latency")
    parser.add_argument("--inflight", type=int, default=200)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--ttl", type=int, default=2, help="lease TTL of orchestrators and workers")
    parser.add_argument("--observe", action="store_true", help="metrics + tracing middleware on every role")
    parser.add_argument("--shards", type=int, default=None, help="shards of the namespace (default: the engine's)")
    args = parser.parse_args(argv)
    asyncio.run(run(args.n, args.inflight, args.duration, args.ttl, args.observe, args.shards))
    return 0


if __name__ == "__main__":
    sys.exit(main())
