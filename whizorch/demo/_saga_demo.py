"""The saga demo (``whizorch demo``): real processes, real kills, measured failovers.

1. etcd: a local 3-member cluster (or ``--etcd ENDPOINTS``), a fresh namespace.
2. Workers (eu, 2 x us, ap) and three orchestrators, each its own ``python -m
   whizorch`` process; the orchestrators share the namespace's ``--shards`` (8) and
   print JSON events, a ``leader``/``follower`` event per shard (`_shards.ShardBoard`).
3. A stream of sagas (`whizorch.demo.apps`) at ``--rate`` with a bounded number in
   flight; the demo's SagaClient records each one's latency and outcome.
4. At 1/3 of ``--duration`` every worker of region ``us`` is SIGKILLed; the region
   failover time is the kill -> the first ``failover`` event away from ``us``. At 2/3
   the orchestrator leading the most shards is SIGKILLed; each of its shards is led
   again by another (the kill -> that shard's new ``leader`` event), and no other
   shard should change leader.
5. The stream stops, the sagas in flight finish (bounded), etcd is audited (every saga
   has a final record), everything the demo started is stopped and the summary printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from whizorch.demo import apps
from whizorch.demo._console import ConsoleProcess
from whizorch.demo._display import Display, LiveDisplay, PlainDisplay
from whizorch.demo._report import Kill, Tally, summarise
from whizorch.demo._roles import Role, RoleFailed
from whizorch.demo._shards import Move, shard_list
from whizorch.demo._stream import Stream
from whizorch.demo._wan import WanPlacement, run_wan
from whizorch.demo._wan_table import wan_table
from whizorch.errors import ConfigError, WhizorchError
from whizorch.etcd import EtcdClient
from whizorch.saga import SagaClient
from whizorch.testing import LocalEtcdCluster

__all__ = ["DemoOptions", "run"]

KILL_REGION = "us"
ORCHESTRATORS = 3
_FAILOVER_LINES = 5
"""Failovers printed one by one after a kill; the rest are counted in progress lines."""
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Ctrl-C, kill, a closed terminal: each stops the demo with its cleanup."""
_READY_S = 60.0
"""How long a role process may take to start (Python + gRPC on a busy machine)."""


@attrs.frozen(kw_only=True)
class DemoOptions:
    """The demo's command-line options."""

    etcd: str | None = None
    """Endpoints of a cluster to use; None starts a local 3-member cluster."""
    duration_s: float = 30.0
    """Length of the saga stream; the kills happen at 1/3 and 2/3 of it."""
    shards: int = 8
    """Shards of the demo's namespace, shared by its orchestrators."""
    ttl_s: int = 2
    """Lease TTL of every worker and orchestrator (failover takes about this long)."""
    rate: float = 10.0
    """Sagas submitted per second."""
    max_in_flight: int = 50
    """Submitted sagas not yet finished, at most."""
    seed: int = 1
    """Seed of the saga inputs (which fail, which are flaky)."""
    plain: bool = False
    """Plain lines even on a terminal."""
    json_summary: Path | None = None
    """Write the summary here as JSON."""
    wan: bool = False
    """Regions apart: the demo on a region lab (`whizorch.demo._wan`)."""
    wan_lab: Path | None = None
    """Set for the demo the ``--wan`` run places in the lab: where the lab put everything
    (a `WanPlacement` as JSON)."""
    console: str | None = None
    """Serve the web console beside the demo, bound here (host:port); None: no console."""
    namespace: str | None = None
    """The saga namespace (default: ``demo-<time>-<pid>``); the ``--wan`` run picks it
    for the demo it places, so the console it serves reads the same one."""

    @property
    def drain_s(self) -> float:
        """How long the sagas in flight may take to finish once the stream stops."""
        return max(30.0, 10.0 * self.ttl_s)


def demo_namespace() -> str:
    """A fresh namespace for one run."""
    return f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


class SagaDemo:
    """One run of the demo."""

    def __init__(self, options: DemoOptions, tally: Tally, display: Display, wan: WanPlacement | None = None) -> None:
        self.opts = options
        self.t = tally
        self.display = display
        self.wan = wan
        """Where the region lab put everything (``--wan``); None on one loopback."""
        self.roles: list[Role] = []
        self.workdir: Path | None = None
        self.t.namespace = options.namespace or demo_namespace()
        self.t.drain_s = options.drain_s
        self._quiet_failovers = 0
        self._loud_failovers = 0
        self.interrupted = False
        """Set on a stop signal: roles then get no grace period to stop."""

    def log(self, text: str, *, style: str = "") -> None:
        self.display.log(text, style=style)

    # -- setup -----------------------------------------------------------------------

    async def run(self) -> None:
        """Set up, run the stream and the kills, drain, audit; stop everything. The roles'
        stderr logs stay in ``self.workdir`` (the caller removes it)."""
        self.workdir = workdir = Path(tempfile.mkdtemp(prefix="whizorch-demo-"))
        async with contextlib.AsyncExitStack() as stack:
            endpoints = await self._etcd(stack)
            client = await stack.enter_async_context(EtcdClient(endpoints, timeout_s=3.0, retry_deadline_s=10.0))
            # fails fast on a wrong --etcd; a fresh namespace never collides with another run
            taken = await client.get(f"{self.t.namespace}/", prefix=True, count_only=True)
            if taken.count:
                raise ConfigError(f"namespace {self.t.namespace} is in use", field="namespace", value=self.t.namespace)
            if self.opts.etcd is not None:
                stack.push_async_callback(self._delete_namespace, client)
            stack.push_async_callback(self._stop_roles)
            await self._start_roles(endpoints, workdir)
            if self.opts.console is not None and self.wan is None:  # with --wan, the outer run serves it
                console = ConsoleProcess(endpoints, self.t.namespace, self.opts.console, workdir)
                stack.callback(console.stop)
                url = console.start()  # blocks a moment: the roles are processes, nothing here waits
                self.log(f"console: {url} (read-only; live from etcd)", style="bold")
            sagas = await stack.enter_async_context(SagaClient(client, namespace=self.t.namespace))
            await self._stream(sagas)
            await self._audit(sagas)

    async def _etcd(self, stack: contextlib.AsyncExitStack) -> str:
        if self.wan is not None:
            w = self.wan
            self.t.etcd = f"region lab ({w.mode})"
            self.t.endpoints = list(w.endpoints[w.leader])
            self.log(
                f"etcd: the region lab's {len(w.regions)} members, one per region ({', '.join(w.regions)}), etcd "
                f"{w.etcd_version}; this process runs in {w.leader}: {','.join(self.t.endpoints)}"
            )
            self.log(f"namespace {self.t.namespace}")
            return ",".join(self.t.endpoints)
        if self.opts.etcd is not None:
            self.t.etcd = "external"
            self.t.endpoints = [e.strip() for e in self.opts.etcd.split(",") if e.strip()]
            self.log(f"etcd: the given cluster {','.join(self.t.endpoints)}; namespace {self.t.namespace}")
            return self.opts.etcd
        self.log("etcd: starting a local 3-member cluster")
        cluster = LocalEtcdCluster(3, heartbeat_ms=100, election_ms=1000)
        await cluster.astart()
        stack.push_async_callback(self._close_cluster, cluster)
        self.t.etcd = "local"
        self.t.endpoints = list(cluster.endpoints)
        for member in cluster.members:
            if member.pid is not None:
                self.t.processes.append({"name": f"etcd {member.name}", "kind": "etcd", "pid": member.pid, "endpoint": member.endpoint})
        version = ".".join(map(str, cluster.version))
        pids = ", ".join(str(p["pid"]) for p in self.t.processes)
        self.log(f"etcd: 3 members up (etcd {version}, pids {pids}): {','.join(cluster.endpoints)}")
        self.log(f"namespace {self.t.namespace}")
        return ",".join(cluster.endpoints)

    async def _close_cluster(self, cluster: LocalEtcdCluster) -> None:
        await cluster.aclose()
        self.log("etcd: members stopped, data directories removed")

    def _placed(self, region: str | None, endpoints: str) -> tuple[list[str], list[str]]:
        """A role's ``--etcd`` arguments and the argv prefix placing it in ``region`` (on
        the lab: its region's endpoints, own member first; orchestrators in etcd's
        leader's region)."""
        if self.wan is None:
            return ["--etcd", endpoints], []
        where = region or self.wan.leader
        return ["--etcd", ",".join(self.wan.endpoints[where])], list(self.wan.commands[where])

    async def _start_roles(self, endpoints: str, workdir: Path) -> None:
        ttl = str(self.opts.ttl_s)
        common = ["--app", "whizorch.demo.apps:app", "--namespace", self.t.namespace, "--lease-ttl", ttl]
        latency = workdir / "latency.json"
        latency.write_text(json.dumps(apps.LATENCY_MS))
        # workers first: the first leader's rebuild then sees every region registered
        workers = []
        for region, (tags, count) in apps.WORKERS.items():
            for i in range(1, count + 1):
                name = f"{region}-{i}"
                etcd, place = self._placed(region, endpoints)
                args = ["worker", *etcd, *common, "--region", region, "--id", name]
                if tags:
                    args += ["--compliance", ",".join(tags)]
                workers.append(await self._start(name, "worker", args, workdir, region=region, place=place))
        self.log("workers: " + ", ".join(f"{w.name} (pid {w.pid}, {','.join(apps.WORKERS[w.region or ''][0]) or 'no tags'})" for w in workers))
        await asyncio.gather(*(w.wait_event("worker_ready", _READY_S) for w in workers))
        self.t.healthy = sorted(apps.WORKERS, key=list(apps.WORKERS).index)
        pairs = sorted({tuple(sorted((a, b))): ms for a, row in apps.LATENCY_MS.items() for b, ms in row.items()}.items())
        self.log(f"workers ready in {', '.join(self.t.healthy)}; latency (ms) " + ", ".join(f"{a}-{b} {ms}" for (a, b), ms in pairs))
        orchs = []
        board = self.t.shards
        board.count = self.opts.shards
        for i in range(1, ORCHESTRATORS + 1):
            etcd, place = self._placed(None, endpoints)
            args = [
                "orchestrator", *etcd, *common, "--id", f"orch-{i}", "--events", "--latency", str(latency),
                "--shards", str(board.count),
            ]  # fmt: skip
            orchs.append(await self._start(f"orch-{i}", "orchestrator", args, workdir, place=place))
        where = f" in {self.wan.leader} (beside etcd's leader)" if self.wan is not None else ""
        self.log(
            f"orchestrators{where}: " + ", ".join(f"{o.name} (pid {o.pid})" for o in orchs)
            + f", lease TTL {ttl}s; {board.count} shards, each led by one of them"
        )
        await asyncio.gather(*(o.wait_event("orchestrator_ready", _READY_S) for o in orchs))
        nodes = [o.name for o in orchs]
        # the first to start leads every shard, then hands over (resigns) as the others join
        if not await self._until(lambda: board.balanced(nodes), _READY_S):
            if not board.all_led:
                raise RoleFailed(f"not every shard had a leader after {_READY_S:g}s: {board.line(nodes)}")
            self.log(f"the shares have not evened out yet: {board.line(nodes)}", style="yellow")
        self.log(f"shards: {board.line(nodes)}", style="bold green")

    async def _start(
        self, name: str, kind: str, args: list[str], workdir: Path, *, region: str | None = None, place: list[str] | None = None
    ) -> Role:
        role = await Role.start(name, kind, args, log_dir=workdir, on_event=self._on_event, region=region, place=place or ())
        self.roles.append(role)
        self.t.processes.append({"name": name, "kind": kind, "pid": role.pid})
        self._refresh_roles()
        return role

    def _refresh_roles(self) -> None:
        workers: dict[str, list[tuple[str, int, bool]]] = {}
        for r in self.roles:
            if r.kind == "worker" and r.region is not None:
                workers.setdefault(r.region, []).append((r.name, r.pid, r.killed_at is None))
        self.t.workers = workers
        self.t.orchestrators = [(r.name, r.pid, r.killed_at is None) for r in self.roles if r.kind == "orchestrator"]

    async def _stop_roles(self) -> None:
        await asyncio.gather(*(r.stop(grace_s=0.5 if self.interrupted else 3.0) for r in self.roles))
        if self.roles:
            self.log(f"stopped {len(self.roles)} role processes")

    async def _delete_namespace(self, client: EtcdClient) -> None:
        await client.delete(f"{self.t.namespace}/", prefix=True)
        self.log(f"deleted every key under {self.t.namespace}/")

    async def _until(self, check: Callable[[], bool], timeout_s: float, failure: str | None = None) -> bool:
        deadline = time.monotonic() + timeout_s
        while not check():
            if time.monotonic() >= deadline:
                if failure is not None:
                    raise RoleFailed(failure)
                return False
            await asyncio.sleep(0.05)  # ok: polls the tally the event readers fill in
        return True

    # -- role events -----------------------------------------------------------------

    def _on_event(self, role: Role, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        t = self.t
        if t.phase == "done":
            return  # what roles say while they are stopped is not part of the run
        if kind in ("leader", "follower"):
            self._on_leadership(role, ev)
        elif kind == "regions":
            healthy = [str(r) for r in ev.get("healthy", [])]
            if healthy != t.healthy:  # every orchestrator says so: once is enough
                t.healthy = healthy
                self.log(f"regions healthy: {', '.join(t.healthy) or 'none'}")
        elif kind == "failover":
            self._on_failover(ev)
        elif kind == "finished":
            first = t.shards.on_finished(str(ev.get("saga_id")), role.name, at=ev["_at"])
            if first is not None:
                self.log(
                    f"first saga finished on a moved shard: {first.saga_id} (shard {first.shard}, under {first.node}), "
                    f"{first.after_s:.2f}s after the kill"
                )

    def _on_leadership(self, role: Role, ev: dict[str, Any]) -> None:
        """A ``leader``/``follower`` event of one shard: the board changes; the setup is
        quiet (the shares settle), the run says what changed, the kill what moved."""
        board, shard, node = self.t.shards, ev.get("shard"), str(ev.get("node"))
        if not isinstance(shard, int):
            return  # not a sharded leadership: the demo's orchestrators always shard
        running = self.t.phase != "setup"
        if ev.get("event") == "follower":
            upset = board.on_follower(node, shard)
            if upset is not None:
                self.log(f"shard {shard}: {node} no longer leads it, though {board.victim} was the one killed", style="bold red")
            elif running and board.victim is None:
                self.log(f"shard {shard}: {node} no longer leads it", style="yellow")
            return
        term, wall = int(ev.get("term", 0)), ev.get("at")
        # an orchestrator says "leader" once it has taken the shard over from etcd
        change = board.on_leader(node, shard, term, at=ev["_at"], wall=float(wall) if isinstance(wall, (int, float)) else None)
        if isinstance(change, Move):
            self.log(f"shard {shard}: {node} leads it (term {term}), {change.after_s:.2f}s after the kill", style="bold green")
            if board.all_moved:
                slowest, median = board.failover_s()
                assert slowest is not None and median is not None
                ttl = self.opts.ttl_s
                met = "met" if slowest <= ttl + 1 else "missed"
                others = "the others kept their leaders" if not board.upsets else "OTHER SHARDS CHANGED LEADER too"
                self.log(
                    f"all {len(board.moves)} shards of {board.victim} led again: slowest {slowest:.2f}s, median "
                    f"{median:.2f}s ({met}: lease TTL {ttl}s + 1 s); {others}",
                    style="bold green" if not board.upsets else "bold red",
                )
                self.log(f"shards: {self._shards_line()}", style="bold green")
        elif change is not None:
            self.log(f"shard {shard}: {change.before or 'none'} -> {node}, though {board.victim} was the one killed", style="bold red")
        elif running and board.victim is None:
            self.log(f"shard {shard}: {node} leads it (term {term})", style="yellow")

    def _shards_line(self) -> str:
        killed = [r.name for r in self.roles if r.kind == "orchestrator" and r.killed_at is not None]
        return self.t.shards.line([name for name, _, _ in self.t.orchestrators], killed=killed)

    def _on_failover(self, ev: dict[str, Any]) -> None:
        t = self.t
        t.failovers.append(ev)
        rk = t.region_kill
        note = ""
        if rk is not None and t.region_failover_at is None and ev.get("from") == rk.target:
            # the leader stamps the decision; the kill time is the demo's own clock
            at = float(ev["at"]) - rk.wall if isinstance(ev.get("at"), (int, float)) else ev["_at"] - rk.at
            t.region_failover_at = rk.at + at
            note = f" ({at:.2f}s after the kill)"
        if self._loud_failovers < _FAILOVER_LINES:
            self._loud_failovers += 1
            sid = str(ev.get("saga_id"))
            step = self._step_name(sid, ev.get("step"))
            self.log(
                f"failover saga {sid} step {ev.get('step')} ({step}): {ev.get('from')} -> {ev.get('to')} ({ev.get('reason')}){note}",
                style="yellow",
            )
        else:
            self._quiet_failovers += 1

    def _step_name(self, saga_id: str, index: Any) -> str:
        run = self.t.sagas.get(saga_id)
        saga = apps.app.get(run.saga) if run is not None else None
        if saga is None or not isinstance(index, int) or not 0 <= index < len(saga.steps):
            return "?"
        return saga.steps[index].name

    # -- the stream ------------------------------------------------------------------

    async def _stream(self, sagas: SagaClient) -> None:
        d, o = self.opts.duration_s, self.opts
        stream = Stream(sagas, self.t, self.log, rate=o.rate, max_in_flight=o.max_in_flight, seed=o.seed)
        self.t.run_start = time.monotonic()
        self.t.phase = "running"
        self.log(
            f"stream: {d:g}s at {o.rate:g} sagas/s (at most {o.max_in_flight} in flight); "
            f"kill region {KILL_REGION} at {d / 3:.1f}s, the orchestrator leading the most shards at {2 * d / 3:.1f}s"
        )
        async with asyncio.TaskGroup() as tg:
            ticker = tg.create_task(self._ticker())
            tg.create_task(self._scenario(stream))
            await stream.submit_until_stopped(tg)
            self.t.run_end = time.monotonic()
            self.t.phase = "draining"
            self.log(f"stream stopped; waiting for {len(stream.inflight)} sagas in flight (up to {o.drain_s:g}s)")
            unfinished = await stream.drain(o.drain_s)
            if unfinished:
                self.log(f"{unfinished} sagas still unfinished after {o.drain_s:g}s", style="red")
            board = self.t.shards
            if self.t.orch_kill is not None and not board.all_moved:
                await self._until(lambda: board.all_moved, 10.0 * o.ttl_s)
            moved = set(board.victim_shards)
            if board.first_saga is None and any(
                r.shard in moved and r.finished_at is not None and r.finished_at > board.kill_at for r in self.t.sagas.values()
            ):  # the client saw one finish: its leader's event is on its way down a pipe
                await self._until(lambda: board.first_saga is not None, 5.0)
            self.t.phase = "done"
            ticker.cancel()
        c = self.t.counts()
        self.log(f"done: {c['completed']} completed, {c['compensated']} compensated, {c['failed']} failed, {c['in flight']} unfinished")

    async def _ticker(self) -> None:
        while True:
            if self._quiet_failovers:
                self.log(f"... and {self._quiet_failovers} more failovers", style="yellow")
                self._quiet_failovers = 0
            self.display.tick()
            await asyncio.sleep(0.25)  # ok: display refresh period

    async def _scenario(self, stream: Stream) -> None:
        d, start = self.opts.duration_s, self.t.run_start
        assert start is not None
        await asyncio.sleep(max(0.0, start + d / 3 - time.monotonic()))  # ok: the timeline's first kill
        self._kill_region(KILL_REGION)
        await asyncio.sleep(max(0.0, start + 2 * d / 3 - time.monotonic()))  # ok: the timeline's second kill
        # measure the two failovers apart: the orchestrator dies once the region failover is seen
        if not await self._until(lambda: self.t.region_failover_at is not None, 10.0 * self.opts.ttl_s):
            self.log(f"no failover away from {KILL_REGION} seen yet; killing an orchestrator anyway", style="red")
        if not await self._until(lambda: self.t.shards.all_led, 10.0 * self.opts.ttl_s):
            self.log(f"not every shard is led ({self._shards_line()}); killing an orchestrator anyway", style="red")
        self._kill_orchestrator()
        await asyncio.sleep(max(0.0, start + d - time.monotonic()))  # ok: the end of the stream
        stream.stop()

    def _kill_region(self, region: str) -> None:
        victims = [r for r in self.roles if r.kind == "worker" and r.region == region and r.running]
        if not victims:
            self.log(f"region {region} has no worker left to kill", style="red")
            return
        wall, at = time.time(), time.monotonic()
        for role in victims:
            role.kill()
        self.t.region_kill = Kill(
            what="region", target=region, pids=[r.pid for r in victims], names=[r.name for r in victims], at=at, wall=wall
        )
        self._loud_failovers = 0
        self._refresh_roles()
        pids = ", ".join(f"{r.name} pid {r.pid}" for r in victims)
        self.log(f"KILL region {region} ({len(victims)} workers, SIGKILL: {pids})", style="bold red")

    def _kill_orchestrator(self) -> None:
        """SIGKILL the orchestrator leading the most shards (shard 0's leader among equals)."""
        board = self.t.shards
        alive = {r.name: r for r in self.roles if r.kind == "orchestrator" and r.running}
        name = board.pick_victim(list(alive))
        if name is None:
            self.log("no orchestrator leads a shard: none killed", style="red")
            return
        victim = alive[name]
        before = self._shards_line()
        wall, at = time.time(), time.monotonic()
        victim.kill()
        led = board.on_kill(victim.name, at=at, wall=wall)
        self.t.orch_kill = Kill(what="orchestrator", target=victim.name, pids=[victim.pid], names=[victim.name], at=at, wall=wall)
        self._refresh_roles()
        self.log(f"KILL orchestrator {victim.name} (pid {victim.pid}, SIGKILL); it leads shards {shard_list(led)}", style="bold red")
        self.log(f"shards: {before}; the others wait out its lease ({self.opts.ttl_s}s)")

    # -- the audit ---------------------------------------------------------------------

    async def _audit(self, sagas: SagaClient) -> None:
        """What etcd holds for every saga the demo submitted: a lost saga shows here."""
        listed = {s.saga_id: s.status for s in await sagas.list()}
        self.t.audit = {sid: listed.get(sid) for sid in self.t.sagas}
        self.t.audited = True
        submitted = [run for run in self.t.sagas.values() if run.submitted]
        missing = sum(listed.get(run.saga_id) is None for run in submitted)
        agree = sum(run.status is not None and listed.get(run.saga_id) == run.status for run in submitted)
        self.log(
            f"audit: etcd has {len(submitted) - missing} of the {len(submitted)} sagas submitted; "
            f"{agree} with the final outcome the demo saw"
        )


def _options_json(o: DemoOptions) -> dict[str, Any]:
    return {
        "duration_s": o.duration_s, "ttl_s": o.ttl_s, "shards": o.shards, "rate": o.rate, "max_in_flight": o.max_in_flight,
        "seed": o.seed,
    }  # fmt: skip


async def _until_signalled(demo: SagaDemo) -> int | None:
    """Run the demo; SIGINT, SIGTERM or SIGHUP cancels it (its cleanup still runs). The signal, or None."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    caught: list[int] = []

    def stop(sig: signal.Signals) -> None:
        if not caught:
            demo.log(f"{sig.name}: stopping every process the demo started", style="bold red")
        caught.append(sig)
        demo.interrupted = True
        task.cancel()

    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop, sig)
    try:
        await demo.run()
    except asyncio.CancelledError:
        if not caught:
            raise
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    return caught[0] if caught else None


def run(options: DemoOptions) -> int:
    """Run the demo and print the summary. Exit status: 0 when it all went as designed,
    1 when not (the summary says why), 128 + the signal when interrupted."""
    if options.wan and options.wan_lab is None:
        return run_wan(options)
    wan = WanPlacement.from_json(options.wan_lab.read_text()) if options.wan_lab is not None else None
    tally = Tally()
    # the live panel's title: at most 76 characters, for an 80-column terminal
    title = f"whizorch demo: sagas in 3 regions; {KILL_REGION} and an orchestrator killed mid-run"
    if wan is not None:
        title = f"whizorch demo --wan (region lab, {wan.mode}): {KILL_REGION} and an orchestrator killed"
    display: Display
    if sys.stdout.isatty() and not options.plain:
        display = LiveDisplay(tally, options.duration_s, title=title)
    else:
        print(title, flush=True)
        display = PlainDisplay(tally, options.duration_s)
    error: str | None = None
    demo = SagaDemo(options, tally, display, wan)
    with display:
        try:
            caught = asyncio.run(_until_signalled(demo))
        except (WhizorchError, RoleFailed, OSError) as exc:
            caught = None
            error = f"{type(exc).__name__}: {exc}"
            display.log(error, style="bold red")
    if caught is not None:
        if demo.workdir is not None:
            shutil.rmtree(demo.workdir, ignore_errors=True)
        print(f"interrupted by {signal.Signals(caught).name}: every process the demo started was stopped",
              file=sys.stderr, flush=True)
        return 128 + caught
    summary = summarise(tally, options=_options_json(options))
    if wan is not None and tally.run_start is not None:
        summary["wan"] = wan_table(tally, wan, ttl_s=options.ttl_s)
    if error is not None:
        summary["ok"] = False
        # a run that never started has nothing else worth saying
        summary["reasons"] = [error] if tally.run_start is None else [error, *summary["reasons"]]
        summary["verdict"] = "FAILED: " + "; ".join(summary["reasons"])
    if demo.workdir is not None:
        if summary["ok"] or not demo.roles:
            shutil.rmtree(demo.workdir, ignore_errors=True)
        else:  # the roles' stderr says what went wrong on their side
            summary["logs"] = str(demo.workdir)
    if options.json_summary is not None:
        options.json_summary.write_text(json.dumps(summary, indent=2) + "\n")
    display.summary(summary)
    return 0 if summary["ok"] else 1
