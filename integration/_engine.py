"""One process's saga engine for tests: orchestrators, workers and a SagaClient in the
test's event loop, on real etcd, in one namespace (shared by the in-process saga tests)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import saga_apps as apps

from whizorch import EtcdClient
from whizorch.saga import App, Orchestrator, SagaClient, SagaRecord, Worker
from whizorch.testing import eventually_async

__all__ = ["RESULT_S", "TTL", "Engine", "engine_on"]

TTL = 2
"""Lease TTL (s) of every orchestrator and worker: small, so that failover is quick."""

RESULT_S = 30.0
"""How long a test waits for a saga's outcome."""


class Engine:
    """Orchestrators, workers and a SagaClient in this event loop, in one namespace.

    Everything started is closed when the test ends; held steps are released first so
    that workers drain at once.
    """

    def __init__(self, client: EtcdClient, namespace: str, directory: Path, stack: contextlib.AsyncExitStack) -> None:
        self.client = client
        self.ns = namespace
        self.dir = directory
        self._stack = stack
        self.sagas = SagaClient(client, namespace=namespace)

    async def orchestrator(self, *, app: App = apps.leader_app, **options: Any) -> Orchestrator:
        """Start an orchestrator candidate (it campaigns in the background)."""
        options.setdefault("lease_ttl_s", TTL)
        orch = Orchestrator(self.client, app, namespace=self.ns, **options)
        return await self._stack.enter_async_context(orch)

    async def leader(self, **options: Any) -> Orchestrator:
        """Start an orchestrator and wait until it leads."""
        orch = await self.orchestrator(**options)
        await orch.wait_leader(10)
        return orch

    async def worker(self, region: str = "eu", *, app: App = apps.app, **options: Any) -> Worker:
        """Start a worker in ``region`` (returns once it is registered)."""
        options.setdefault("lease_ttl_s", TTL)
        options.setdefault("drain_timeout_s", 2.0)
        worker = Worker(self.client, app, region=region, namespace=self.ns, **options)
        return await self._stack.enter_async_context(worker)

    def plan(self, **steer: Any) -> dict[str, Any]:
        """A saga input that records into this test's directory and steers the steps."""
        return {"dir": str(self.dir), **steer}

    def runs(self, saga_id: str, *, kind: str | None = None, phase: str = "start") -> list[tuple[str, int]]:
        """(step, attempt) of every recorded run of ``saga_id``, in the order they happened."""
        return [
            (r["step"], r["attempt"])
            for r in apps.read_runs(self.dir)
            if r["saga_id"] == saga_id and r["phase"] == phase and (kind is None or r["kind"] == kind)
        ]

    async def record(self, saga_id: str) -> SagaRecord:
        """The saga record as etcd has it now."""
        rec = await self.sagas.get(saga_id)
        assert rec is not None, f"no record for {saga_id}"
        return rec

    async def keys(self, *kinds: str) -> list[str]:
        """Keys under ``<ns>/<kind>/`` for each kind (every key when none is given)."""
        prefixes: Iterable[str] = [f"{self.ns}/{k}/" for k in kinds] or [f"{self.ns}/"]
        out: list[str] = []
        for p in prefixes:
            out += [kv.key.decode() for kv in (await self.client.get(p, prefix=True)).kvs]
        return out

    async def held(self, saga_id: str, step: str, attempt: int = 1) -> None:
        """Wait until ``step`` of ``saga_id`` is running and held."""

        def check() -> None:
            assert any(
                r["saga_id"] == saga_id and r["step"] == step and r["phase"] == "held" and r["attempt"] == attempt
                for r in apps.read_runs(self.dir)
            )

        await eventually_async(check, timeout=15, message=f"{saga_id} step {step} held")


@contextlib.asynccontextmanager
async def engine_on(client: EtcdClient, namespace: str, directory: Path) -> AsyncIterator[Engine]:
    """An Engine whose roles are closed on the way out; then no leader key and no
    worker registration may be left (resigned, leases revoked)."""
    async with contextlib.AsyncExitStack() as stack:
        eng = Engine(client, namespace, directory, stack)
        stack.push_async_callback(eng.sagas.aclose)
        try:
            yield eng
        finally:
            apps.release(directory)
            await stack.aclose()
    assert await eng.keys("leader", "region") == []


