"""A rolling deploy of a changed saga under load, with real processes on real etcd.

The deployment (2 orchestrators, 4 workers in 2 regions) runs version 1 of ``order``
(steps a, b, c) while a stream of sagas is submitted by name. It is rolled the way
docs/design.md ("Rolling deploy") says: every worker, then every orchestrator, is
replaced by one whose App holds versions 1 and 2 (2 current), each old process
SIGTERMed once its replacement is ready; once no version 1 saga is in flight, every
process is replaced by one with version 2 only. Every saga must complete with all its
steps from the version it was pinned to, no step may run twice, no saga may wait out
a lease (the TTL is long: a saga that waited for one would take longer than it), and
every process must exit 0 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import saga_apps as apps
from _children import Child, children

from whizorch import EtcdClient
from whizorch.saga import SagaClient, SagaRecord
from whizorch.testing import LocalEtcdCluster, eventually_async

NS = "roll"
TTL = 30
"""Lease TTL (s): long, so that a saga that waited for a lease to expire would show it."""
HERE = Path(__file__).resolve().parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


class Deployment:
    """Role processes by name; replacing one starts the new process, waits until it is
    ready, then SIGTERMs the old and checks that it exits 0."""

    def __init__(self, started: list[Child], endpoints: list[str], directory: Path) -> None:
        self.started = started
        self.endpoints = endpoints
        self.dir = directory
        self.live: dict[str, Child] = {}
        self.exits: dict[str, int] = {}
        self._count = 0

    async def start(self, name: str, role: str, app: str, region: str | None = None) -> Child:
        self._count += 1
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
        env[apps.DIR_ENV] = str(self.dir)
        ident = f"{name}-{self._count}"
        argv = [sys.executable, "-m", "whizorch", role, "--etcd", ",".join(self.endpoints), "--app", f"saga_apps:{app}",
                "--namespace", NS, "--lease-ttl", str(TTL), "--id", ident]  # fmt: skip
        argv += ["--region", region] if region else ["--events"]
        child = await Child.start(ident, argv, env=env)
        self.started.append(child)
        await child.next_event("worker_ready" if region else "orchestrator_ready", 60)
        self.live[name] = child
        return child

    async def replace(self, name: str, role: str, app: str, region: str | None = None) -> None:
        old = self.live[name]
        await self.start(name, role, app, region)
        old.send(signal.SIGTERM)
        self.exits[old.name] = await old.wait_exit(60)

    async def stop_all(self) -> None:
        for child in list(self.live.values()):
            child.send(signal.SIGTERM)
            self.exits[child.name] = await child.wait_exit(60)


@pytest.fixture
async def deployment(etcd_cluster: LocalEtcdCluster, tmp_path: Path) -> AsyncIterator[Deployment]:
    async with children() as started:
        yield Deployment(started, etcd_cluster.endpoints, tmp_path)


WORKERS = {"eu-1": "eu", "eu-2": "eu", "us-1": "us", "us-2": "us"}
ORCHESTRATORS = ("o-1", "o-2")


async def test_rolling_deploy_v1_to_v2_under_load(deployment: Deployment, etcd_cluster: LocalEtcdCluster, tmp_path: Path) -> None:
    """Roll 4 workers (2 regions) and 2 orchestrators from version 1 to 2 of a saga
    while sagas stream in: all complete, each from one version, no step twice, none
    waits out a lease, every process exits 0 on SIGTERM."""
    d = deployment
    for name in ORCHESTRATORS:
        await d.start(name, "orchestrator", "app_v1")
    for name, region in WORKERS.items():
        await d.start(name, "worker", "app_v1", region)

    submitted: list[str] = []
    async with EtcdClient(etcd_cluster.endpoints, timeout_s=5.0, retry_deadline_s=20.0) as client, \
            SagaClient(client, namespace=NS) as sagas:  # fmt: skip
        stop = asyncio.Event()

        async def stream() -> None:
            while not stop.is_set():
                sid = f"s-{len(submitted):04d}"
                # each step takes a while, so that rolled workers hold runs as they drain
                await sagas.submit("order", {"dir": str(tmp_path), "sleep": {"a": 0.05, "b": 0.1, "c": 0.05}}, saga_id=sid)
                submitted.append(sid)
                await asyncio.sleep(0.05)  # ok: the stream's pace

        async def records() -> dict[str, SagaRecord]:
            got = await client.get(f"{NS}/saga/", prefix=True)
            return {rec.id: rec for rec in (SagaRecord.from_json(kv.value) for kv in got.kvs)}

        streaming = asyncio.ensure_future(stream())
        try:
            await eventually_async(lambda: len(submitted) >= 10, timeout=60, message="the stream started")
            # 1. workers that can run both versions, then orchestrators that make 2 current
            for name, region in WORKERS.items():
                await d.replace(name, "worker", "app_both", region)
            for name in ORCHESTRATORS:
                await d.replace(name, "orchestrator", "app_both")
            first_v2 = len(submitted)

            # 2. once no version 1 saga is in flight, drop version 1 everywhere
            async def v1_drained() -> None:
                recs = await records()
                assert any(r.version == "2" for r in recs.values())
                assert not [sid for sid, r in recs.items() if r.version == "1" and not r.is_final]

            await eventually_async(v1_drained, timeout=120, message="the version 1 sagas finished")
            for name, region in WORKERS.items():
                await d.replace(name, "worker", "app_v2", region)
            for name in ORCHESTRATORS:
                await d.replace(name, "orchestrator", "app_v2")
            await eventually_async(lambda: len(submitted) >= first_v2 + 10, timeout=60, message="sagas after the roll")
        finally:
            stop.set()
            await streaming

        async def all_final() -> dict[str, SagaRecord]:
            recs = await records()
            assert sorted(recs) == sorted(submitted), "every submission has a record"
            assert all(r.is_final for r in recs.values())
            return recs

        final = await eventually_async(all_final, timeout=120, message="every saga finished")
    await d.stop_all()

    assert {r.status for r in final.values()} == {"completed"}, {s: r.error for s, r in final.items() if r.status != "completed"}
    runs = [r for r in apps.read_runs(tmp_path) if r["phase"] == "start"]
    by_saga: dict[str, list[dict[str, object]]] = {}
    for r in runs:
        by_saga.setdefault(str(r["saga_id"]), []).append(r)
    versions = {rec.version for rec in final.values()}
    assert versions == {"1", "2"}, versions
    for sid, rec in final.items():
        ran = by_saga.get(sid, [])
        # every step ran once (no step twice), all from the saga's own version
        assert sorted(str(r["step"]) for r in ran) == sorted(s.name for s in rec.steps), (sid, ran)
        assert {r["version"] for r in ran} == {rec.version}, (sid, ran)
        assert all(s.run == 1 and s.failures == 0 for s in rec.steps), (sid, rec.steps)
        assert rec.finished is not None and rec.finished - rec.created < TTL, (sid, "waited out a lease")
        assert [s.name for s in rec.steps] == (["a", "b", "c"] if rec.version == "1" else ["a", "c"])
    assert d.exits and set(d.exits.values()) == {0}, d.exits
    assert len(d.exits) == 3 * (len(WORKERS) + len(ORCHESTRATORS))
