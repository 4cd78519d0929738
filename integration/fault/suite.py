"""One seeded run of the fault suite, from an empty machine to a verdict.

`run_seed` starts 3 etcd members, a proxy per member, 2 workers per region (eu, us,
ap) and 3 orchestrators sharing 8 shards (both counts are settings) as real CLI
processes (lease TTL 2 s), seeds the ledger, submits the seed's transfers at a steady
rate while the `Nemesis` injects one fault at a time, then (the quiet period) waits for
every role to be back, every saga to settle and the shards' shares to settle, reads
etcd (its history of elections and saga records too) and the handlers' lines into a
`History` and checks it.
Everything it started is torn down on the way out, failure or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _history import events as history_events

from whizorch import Compare, EtcdClient, EventType, Op, WhizorchError
from whizorch.etcd import RangeResult
from whizorch.saga import SagaClient
from whizorch.saga._shards import shard_of
from whizorch.testing import LocalEtcdCluster, eventually_async

from . import settings
from .checker import Effect as EffectRecord
from .checker import (
    History,
    KeyEvent,
    RecordWrite,
    RolesSnapshot,
    RunResult,
    ShardLead,
    Term,
    Transfer,
    Violation,
    check,
    check_roles,
    check_shares,
    parse_attempts,
    parse_history,
)
from .consistency import check_members, known_bug
from .ledger import REGIONS, ROUTES, account_key, frozen_key, saga_name
from .nemesis import Nemesis
from .proxy import Proxies
from .report import render
from .roles import Deployment, RoleSpec, role_env

__all__ = ["Options", "Outcome", "Workload", "plan_workload", "run_seed"]

NAMESPACE = "fault"
LEDGER_PREFIX = "ledger/"
INITIAL_BALANCE = 10_000
HERE = Path(__file__).resolve().parent
APP = f"{__package__.rpartition('.')[2] or 'fault'}.ledger_app:app"
"""The roles import the package as ``fault`` with integration/ on their PYTHONPATH."""


@dataclass(frozen=True)
class Options:
    """One run's knobs (the seed decides everything random)."""

    seed: int
    duration_s: float = 25.0
    """How long the nemesis and the submitter run."""
    sagas: int | None = None
    """Transfers submitted at a steady rate over the duration (default 4 per second)."""
    ttl_s: int = 2
    shards: int = settings.DEFAULT_SHARDS
    """The namespace's shard count (``--shards`` of the orchestrators)."""
    orchestrators: int = settings.DEFAULT_ORCHESTRATORS
    """Orchestrator processes sharing the shards."""
    settle_s: float = 30.0
    """After the last heal, every saga must be final, and the shards' shares even,
    within this."""
    back_slack_s: float = 2.0
    """After the last heal, every role must be back within TTL + 1 s + this."""
    accounts: int = 12
    frozen: int = 2
    handler_delay_s: float = 0.2
    whizorch_path: str | None = None
    """A directory holding the ``whizorch`` package the roles run (a snapshot of a
    commit); None: the installed one (the working tree, for an editable install)."""

    @property
    def saga_count(self) -> int:
        return self.sagas if self.sagas is not None else max(1, round(4 * self.duration_s))

    def describe(self) -> str:
        return (f"duration {self.duration_s:g}s, {self.saga_count} sagas, {self.shards} shards, "
                f"{self.orchestrators} orchestrators, TTL {self.ttl_s}s, settle {self.settle_s:g}s, "
                f"roles back within {self.ttl_s + 1 + self.back_slack_s:g}s, {self.accounts} accounts ({self.frozen} frozen), "
                f"handler delays up to {self.handler_delay_s:g}s")

    def replay(self) -> str:
        env, flags = "", ""
        if self.shards != settings.DEFAULT_SHARDS:
            env, flags = env + f"WHIZORCH_FAULT_SHARDS={self.shards} ", flags + f" --shards {self.shards}"
        if self.orchestrators != settings.DEFAULT_ORCHESTRATORS:
            env += f"WHIZORCH_FAULT_ORCHESTRATORS={self.orchestrators} "
            flags += f" --orchestrators {self.orchestrators}"
        return (f"WHIZORCH_FAULT_SEED={self.seed} WHIZORCH_FAULT_DURATION_S={self.duration_s:g} "
                f"WHIZORCH_FAULT_SAGAS={self.saga_count} {env}.venv/bin/python -m pytest integration/fault   "
                f"# or: .venv/bin/python -m integration.fault --seed {self.seed} --duration {self.duration_s:g} "
                f"--sagas {self.saga_count}{flags}" + (f" --delay {self.handler_delay_s:g}" if self.handler_delay_s != 0.2 else ""))


@dataclass
class Outcome:
    """The verdict of one run."""

    seed: int
    violations: list[Violation]
    report: str
    timings: dict[str, float] = field(default_factory=dict)
    faults: int = 0

    void: str | None = None
    """Why the verdict says nothing about whizorch: etcd itself diverged, on a version
    with a published bug that does this (the violations are still listed)."""

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass(frozen=True)
class Workload:
    initial: dict[str, int]
    frozen: frozenset[str]
    transfers: list[Transfer]


def plan_workload(opts: Options) -> Workload:
    """The seed's accounts, frozen accounts and transfers (its own random stream)."""
    rng = random.Random(f"workload-{opts.seed}")
    names = [f"acct{i:02d}" for i in range(opts.accounts)]
    initial = dict.fromkeys(names, INITIAL_BALANCE)
    frozen = frozenset(rng.sample(names, opts.frozen))
    transfers = []
    for i in range(opts.saga_count):
        src_region, dst_region = ROUTES[rng.randrange(len(ROUTES))]
        source, target = rng.sample(names, 2)
        transfers.append(Transfer(
            saga_id=f"s{opts.seed}-t{i:04d}", saga=saga_name(src_region, dst_region), source=source, target=target,
            amount=rng.randint(1, 100), expected="compensated" if target in frozen else "completed",
        ))
    return Workload(initial, frozen, transfers)


def role_specs(orchestrators: int) -> list[RoleSpec]:
    """2 workers per region and ``orchestrators`` orchestrators (o1, o2, ...), rotated
    over the 3 members so the two workers of a region, and the orchestrators (3 at
    most), sit on different members."""
    specs, rotation = [], 0
    for region in REGIONS:
        for n in (1, 2):
            specs.append(RoleSpec(f"{region}-{n}", "worker", region, rotation % 3))
            rotation += 1
    specs += [RoleSpec(f"o{i + 1}", "orchestrator", None, i % 3) for i in range(orchestrators)]
    return specs


async def _seed_ledger(client: EtcdClient, work: Workload) -> None:
    ops = [Op.put(account_key(LEDGER_PREFIX, a), str(b)) for a, b in work.initial.items()]
    ops += [Op.put(frozen_key(LEDGER_PREFIX, a), "1") for a in sorted(work.frozen)]
    await client.txn([Compare.create_revision(account_key(LEDGER_PREFIX, next(iter(work.initial))), "==", 0)], ops)


class _Submitter:
    """Submits the transfers at a steady rate; each submission retried until acknowledged
    (submitting one saga id twice starts one saga)."""

    def __init__(self, sagas: SagaClient, transfers: list[Transfer], duration_s: float, t0: float) -> None:
        self.sagas = sagas
        self.transfers = transfers
        self.interval = duration_s / max(1, len(transfers))
        self.t0 = t0
        self.acked: dict[str, float] = {}
        self.errors: dict[str, str] = {}

    async def _one(self, t: Transfer) -> None:
        deadline = time.monotonic() + 60.0
        while True:
            try:
                await self.sagas.submit(t.saga, {"from": t.source, "to": t.target, "amount": t.amount}, saga_id=t.saga_id)
                self.acked[t.saga_id] = time.monotonic() - self.t0
                return
            except WhizorchError as exc:
                self.errors[t.saga_id] = f"{type(exc).__name__}: {exc}"
                if time.monotonic() > deadline:
                    return
                await asyncio.sleep(0.2)  # ok: back off before submitting again (idempotent)

    async def run(self) -> None:
        tasks = []
        try:
            for i, t in enumerate(self.transfers):
                delay = self.t0 + i * self.interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # ok: the workload's steady submission rate
                tasks.append(asyncio.ensure_future(self._one(t)))
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _roles_snapshot(client: EtcdClient, deployment: Deployment, shards: int) -> RolesSnapshot:
    """Registrations, membership and election keys (one read) against the live role
    processes."""
    res = await client.txn([], [
        Op.get(f"{NAMESPACE}/region/", prefix=True),
        Op.get(f"{NAMESPACE}/orch/", prefix=True),
        Op.get(f"{NAMESPACE}/leader/", prefix=True, sort_target="create", sort_order="ascend"),
    ])  # fmt: skip
    regs, orchs, elections = res.responses
    assert isinstance(regs, RangeResult) and isinstance(orchs, RangeResult) and isinstance(elections, RangeResult)
    per_region: dict[str, int] = defaultdict(int)
    own: dict[str, tuple[int, str]] = {}  # role name -> (create revision, lease hex) of its newest key
    for kv in regs.kvs:
        per_region[kv.key.decode().split("/")[-2]] += 1
        with contextlib.suppress(ValueError, AttributeError):
            name = str(json.loads(kv.value).get("worker"))
            own[name] = max(own.get(name, (0, "")), (kv.create_revision, ""))
    for kv in orchs.kvs:
        with contextlib.suppress(ValueError, AttributeError):
            name = str(json.loads(kv.value).get("node"))
            own[name] = max(own.get(name, (0, "")), (kv.create_revision, kv.key.decode().rpartition("/")[2]))
    leaders: dict[int, ShardLead] = {}
    for kv in elections.kvs:  # by create revision: each shard's first key leads it
        shard, _, lease = kv.key.decode()[len(f"{NAMESPACE}/leader/") :].partition("/")
        if not shard.isdigit():
            continue
        k = int(shard)
        lead = leaders.get(k)
        node = kv.value.decode(errors="replace")
        leaders[k] = ShardLead(lease, node) if lead is None else \
            dataclasses.replace(lead, keys=lead.keys + 1, queued=(*lead.queued, f"{node} ({lease})"))
    live = [r for r in deployment.roles.values() if r.state == "running" and r.pid is not None]
    current = {r.name: own[r.name] for r in live if own.get(r.name, (0, ""))[0] > r.started_rev}
    return RolesSnapshot(
        live_workers=deployment.live_workers(),
        registrations=dict(per_region),
        shards=shards,
        leaders=leaders,
        live_orchestrators=[r.name for r in live if r.spec.kind == "orchestrator"],
        sessions={name: lease for name, (_, lease) in current.items() if lease},
        members=len(orchs.kvs),
        not_running=deployment.not_running(),
        unregistered=[r.name for r in live if r.name not in current],
        exits=list(deployment.exits),
    )


async def _terms_history(client: EtcdClient, since: int, shards: int) -> tuple[list[Term], list[RecordWrite]]:
    """The shards' terms and every saga record write since ``since``, from etcd's own
    history of the namespace (``_history.events``: every event up to a marker it puts)."""
    found = await history_events(client, f"{NAMESPACE}/", since=since, timeout=120.0)
    wanted = (f"{NAMESPACE}/leader/".encode(), f"{NAMESPACE}/saga/".encode())
    plain = [
        KeyEvent(
            "put" if ev.type is EventType.PUT else "delete", ev.kv.key.decode(errors="replace"), ev.revision,
            ev.kv.create_revision, ev.kv.value,
        )
        for ev in found if ev.kv.key.startswith(wanted)
    ]  # fmt: skip
    return parse_history(plain, NAMESPACE, lambda sid: shard_of(sid, shards))


async def _collect(client: EtcdClient, work: Workload, ledger_dir: Path, roles: RolesSnapshot) -> tuple[History, dict[str, dict[str, Any]]]:
    """Read etcd (one revision) and the handlers' lines into a History."""
    records_res = await client.get(f"{NAMESPACE}/saga/", prefix=True)
    rev = records_res.header.revision
    subs = await client.get(f"{NAMESPACE}/submit/", prefix=True, keys_only=True, revision=rev)
    effects_res = await client.get(f"{LEDGER_PREFIX}effects/", prefix=True, revision=rev)
    accts = await client.get(f"{LEDGER_PREFIX}acct/", prefix=True, revision=rev)
    runs = await client.get(f"{NAMESPACE}/run/", prefix=True, revision=rev)
    records: dict[str, dict[str, Any]] = {}
    statuses: dict[str, str] = {}
    for kv in subs.kvs:
        statuses[kv.key.decode().rpartition("/")[2]] = "pending"
    for kv in records_res.kvs:
        with contextlib.suppress(ValueError):
            rec = json.loads(kv.value)
            records[rec["id"]] = rec
            statuses[rec["id"]] = str(rec["status"])
    effects = []
    for kv in effects_res.kvs:
        _, sid, name = kv.key.decode().rsplit("/", 2)
        raw = json.loads(kv.value)
        effects.append(EffectRecord(
            saga_id=sid, name=name, account=str(raw["account"]), delta=int(raw["delta"]), token=int(raw["token"]),
            revision=kv.create_revision, attempt=int(raw.get("attempt", 0)), worker=str(raw.get("worker", "")),
            pid=int(raw.get("pid", 0)),
        ))
    balances = {kv.key.decode().rpartition("/")[2]: int(kv.value) for kv in accts.kvs}
    results = []
    for kv in runs.kvs:
        parts = kv.key.decode().split("/")  # <ns>/run/<saga>/<step>/<kind>-<attempt>
        if parts[-1] == "claim":
            continue
        kind, _, attempt = parts[-1].rpartition("-")
        with contextlib.suppress(ValueError, KeyError):
            raw = json.loads(kv.value)
            results.append(RunResult(parts[-3], int(parts[-2]), kind, int(attempt), int(raw.get("fence", 0)), bool(raw["ok"])))
    lines = await asyncio.to_thread(_read_lines, ledger_dir)
    history = History(
        transfers=work.transfers, initial=work.initial, balances=balances, statuses=statuses, effects=effects,
        attempts=parse_attempts(lines), results=results, roles=roles,
    )
    return history, records


async def _revision(client: EtcdClient) -> int:
    """etcd's current revision (0 when it cannot tell: then any key counts as newer)."""
    try:
        return (await client.get(f"{NAMESPACE}/none")).header.revision
    except WhizorchError:
        return 0


def _read_lines(ledger_dir: Path) -> list[str]:
    lines: list[str] = []
    for path in sorted(ledger_dir.glob("effects-*.jsonl")):
        lines += path.read_text(errors="replace").splitlines()
    return lines


async def run_seed(opts: Options, *, workdir: Path, etcd_bin: str | None = None, log: Callable[[str], None] = print) -> Outcome:
    """Run one seed; never raises for a violation (see `Outcome`), only for harness trouble."""
    work = plan_workload(opts)
    ledger_dir = workdir / "ledger"
    ledger_dir.mkdir(parents=True, exist_ok=True)
    log(f"[fault suite] seed {opts.seed}: {opts.describe()}; work dir {workdir}; roles run whizorch from "
        f"{opts.whizorch_path or 'the installed package (the working tree)'}")
    log(f"[fault suite] frozen accounts {sorted(work.frozen)}: "
        f"{sum(t.expected == 'compensated' for t in work.transfers)} of {len(work.transfers)} sagas designed to compensate")
    timings: dict[str, float] = {}
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        cluster = await stack.enter_async_context(LocalEtcdCluster(3, etcd_bin=etcd_bin))
        proxies = await stack.enter_async_context(Proxies({m.name: m.endpoint for m in cluster.members}))
        observer = await stack.enter_async_context(EtcdClient(cluster.endpoints, timeout_s=2.0, retry_deadline_s=10.0))
        await _seed_ledger(observer, work)
        paths = [Path(opts.whizorch_path)] if opts.whizorch_path else []
        env = role_env(os.environ, pythonpath=[*paths, HERE.parent], ledger_dir=ledger_dir, prefix=LEDGER_PREFIX,
                       delay_s=opts.handler_delay_s)
        deployment = Deployment(
            role_specs(opts.orchestrators), endpoints=[proxies.endpoint(n) for n in proxies.names], namespace=NAMESPACE,
            ttl_s=opts.ttl_s, app=APP, env=env, log=log, revision=lambda: _revision(observer), shards=opts.shards,
        )
        stack.push_async_callback(deployment.aclose)
        # etcd's history from here on holds every election and every saga record write
        start_rev = (await observer.get(f"{NAMESPACE}/meta")).header.revision
        await deployment.start_all()
        if deployment.failures:
            raise RuntimeError("roles did not start:\n" + "\n".join(deployment.failures))

        async def snap() -> RolesSnapshot:
            return await _roles_snapshot(observer, deployment, opts.shards)

        async def leads() -> None:
            s = await snap()
            assert not check_roles(s) and not check_shares(s), check_roles(s) + check_shares(s)

        try:
            await eventually_async(leads, timeout=60, retry_on=(AssertionError, WhizorchError),
                                   message="every role up and the shards shared among the orchestrators")
        except AssertionError as exc:
            raise RuntimeError(f"{exc}; still: {exc.__cause__}") from exc
        timings["start"] = time.monotonic() - started
        sagas = SagaClient(observer, namespace=NAMESPACE)
        stack.push_async_callback(sagas.aclose)

        async def missing() -> list[str]:
            return [str(v) for v in check_roles(dataclasses.replace(await snap(), exits=()))]

        t0 = time.monotonic()
        t0_wall = time.time()
        nemesis = Nemesis(
            random.Random(f"nemesis-{opts.seed}"), deployment=deployment, cluster=cluster, proxies=proxies,
            observer=observer, namespace=NAMESPACE, ttl_s=opts.ttl_s, t0=t0, log=log, probe=missing,
        )
        submitter = _Submitter(sagas, work.transfers, opts.duration_s, t0)
        submitting = asyncio.ensure_future(submitter.run())
        try:
            await nemesis.run(opts.duration_s)
            last_heal = nemesis.last_heal
            log(f"[fault suite] last heal at +{last_heal - t0:.2f}s; quiet period")
            await submitting
        finally:
            submitting.cancel()
            await asyncio.gather(submitting, return_exceptions=True)

        # every role back within TTL + 1 s (+ slack) of the last heal
        back_by = last_heal + opts.ttl_s + 1.0 + opts.back_slack_s
        snapshot: RolesSnapshot | None = None
        while snapshot is None or (check_roles(snapshot) and time.monotonic() < back_by):
            if snapshot is not None:
                await asyncio.sleep(0.1)  # ok: polling the deployment against the deadline
            try:
                snapshot = await snap()
            except WhizorchError as exc:  # etcd trouble after the last heal: not back
                snapshot = RolesSnapshot({}, {}, not_running=[f"(etcd did not answer: {exc})"])
        timings["roles back"] = time.monotonic() - last_heal

        # every saga final, and the shards' shares settled, within the settle time
        ids = [t.saga_id for t in work.transfers]
        settled: RolesSnapshot | None = None

        async def all_final() -> bool:
            nonlocal settled
            if settled is None or check_shares(settled):
                settled = await snap()
            if check_shares(settled):
                return False
            res = await observer.get(f"{NAMESPACE}/saga/", prefix=True)
            final = 0
            for kv in res.kvs:
                with contextlib.suppress(ValueError):
                    if json.loads(kv.value).get("status") in ("completed", "compensated", "failed"):
                        final += 1
            return final >= len(ids)

        with contextlib.suppress(AssertionError):
            await eventually_async(all_final, timeout=max(0.1, last_heal + opts.settle_s - time.monotonic()), interval=0.25,
                                   retry_on=(AssertionError, WhizorchError))
        timings["settled"] = time.monotonic() - last_heal
        if settled is None:  # etcd did not answer within the settle time: read what is there now
            settled = await snap()

        # the deployment as it was back, and every process that died on its own until now
        snapshot = dataclasses.replace(snapshot, exits=list(deployment.exits), not_running=deployment.not_running())
        history, records = await _collect(observer, work, ledger_dir, snapshot)
        history.settled = settled
        history.terms, history.writes = await _terms_history(observer, start_rev, opts.shards)
        violations = check(history)
        void = None
        try:
            divergence = await check_members(cluster)
        except Exception as exc:  # a member that cannot be asked: etcd is not back either
            violations.append(Violation("etcd", f"could not compare the members' KV hashes: {exc}"))
        else:
            if divergence is not None:
                bug = known_bug(cluster.version)
                violations.insert(0, Violation("etcd", divergence.describe() + (f"; {bug}" if bug else "")))
                if bug is not None:
                    void = (f"etcd itself diverged ({bug}): clients served by the diverged member saw a "
                            "history the cluster does not have, so this seed's saga invariants cannot judge whizorch")
        violations += [Violation("roles", f) for f in deployment.failures]
        unacked = sorted(set(ids) - set(submitter.acked))
        if unacked:
            violations.append(Violation(
                "submit", f"{len(unacked)} submission(s) never acknowledged: "
                + "; ".join(f"{s}: {submitter.errors.get(s, '?')}" for s in unacked[:5]), tuple(unacked),
            ))
        timings["run"] = time.monotonic() - started
        leader_events = [
            f"+{float(e.get('at', 0.0)) - t0_wall:7.2f}s {role}: {e['event']} shard {e.get('shard')} term {e.get('term')}"
            for role, e in sorted(deployment.events("leader", "follower"), key=lambda re: float(re[1].get("at", 0.0)))
        ]
        report = render(
            seed=opts.seed, options=opts.describe(), replay=opts.replay(),
            schedule=[f.describe() for f in nemesis.faults], violations=violations, history=history, records=records,
            timings=timings, leader_events=leader_events, t0=t0_wall,
        )
        if void is not None:
            report = f"== verdict VOID: {void} ==\n" + report
        if violations:
            (workdir / "report.txt").write_text(report + "\n")
            deployment.write_logs(workdir / "roles")
        log(report)
        return Outcome(opts.seed, violations, report, timings, len(nemesis.faults), void)


def main_log(line: str) -> None:
    """Print a line at once (the runner and ``pytest -s`` show the schedule live)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
