"""The one launcher of whizorch role processes for integration tests.

Every test that runs ``python -m whizorch worker|orchestrator`` as a real process starts
it here: `RoleLauncher` builds the command line (``--etcd``, ``--app``,
``--namespace``, ``--lease-ttl``, ``--id``), the environment (``PYTHONPATH`` carries
this directory, so ``--app saga_apps:app`` imports), starts the `Child` and waits for
its ready line. `LabRoles` places the same processes in a region lab's regions.
Every child started goes into the list of an ``async with children()``, so none
outlives its test.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from _children import Child

from whizorch.testing import RegionLab

__all__ = ["HERE", "LATENCY", "LabRoles", "RoleLauncher"]

HERE = Path(__file__).resolve().parent
LATENCY = {"eu": {"us": 80, "ap": 200}, "us": {"eu": 80, "ap": 150}, "ap": {"eu": 200, "us": 150}}
READY = {"worker": "worker_ready", "orchestrator": "orchestrator_ready"}


class RoleLauncher:
    """Starts role processes of one deployment (one namespace, app and lease TTL).

    ``env`` is added to the process environment (this test's directories, say);
    ``lab``, when given, places each process in the region it is started ``in``.
    """

    def __init__(
        self,
        started: list[Child],
        *,
        endpoints: Sequence[str],
        namespace: str,
        ttl: int,
        app: str = "saga_apps:app",
        env: Mapping[str, str] | None = None,
        directory: Path | None = None,
        lab: RegionLab | None = None,
        shards: int | None = None,
    ) -> None:
        self._started = started
        self.endpoints = list(endpoints)
        self.namespace = namespace
        self.ttl = ttl
        self.app = app
        self.extra_env = dict(env or {})
        self.dir = directory
        """The test's directory (what the apps record runs in), when given."""
        self.lab = lab
        self.shards = shards
        """The namespace's shard count, when the test sets it (``--shards``)."""

    def env(self, region: str | None = None) -> dict[str, str]:
        """The environment of a role (placed in ``region`` of the lab, when given)."""
        env = self.lab.env(region) if self.lab is not None and region is not None else dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
        env.update(self.extra_env)
        return env

    def argv(
        self, role: str, ident: str, *extra: str, endpoints: Sequence[str] | None = None, region: str | None = None
    ) -> list[str]:
        """``python -m whizorch <role> ...`` for this deployment (placed in ``region``);
        an orchestrator gets ``--shards`` when the launcher sets the shard count."""
        if endpoints is None:
            endpoints = self.lab.endpoints(region) if self.lab is not None and region is not None else self.endpoints
        cmd = [
            sys.executable, "-m", "whizorch", role, "--etcd", ",".join(endpoints), "--app", self.app,
            "--namespace", self.namespace, "--lease-ttl", str(self.ttl), "--id", ident,
            *(self._shards() if role == "orchestrator" else ()), *extra,
        ]  # fmt: skip
        return self.lab.command(region, cmd) if self.lab is not None and region is not None else cmd

    async def start(
        self,
        role: str,
        ident: str,
        *extra: str,
        ready: str | None = None,
        endpoints: Sequence[str] | None = None,
        region: str | None = None,
        timeout: float = 30.0,
    ) -> Child:
        """Start a role and return once it printed its ready line (``ready``; default
        the role's own: ``worker_ready``, ``orchestrator_ready``)."""
        argv = self.argv(role, ident, *extra, endpoints=endpoints, region=region)
        child = await Child.start(ident, argv, env=self.env(region))
        self._started.append(child)
        await child.next_event(ready or READY[role], timeout)
        return child

    async def worker(self, region: str, ident: str, *extra: str, endpoints: Sequence[str] | None = None) -> Child:
        """A worker of ``region``; returns once it is registered."""
        return await self.start("worker", ident, "--region", region, *extra, endpoints=endpoints)

    async def orchestrator(
        self, ident: str, *extra: str, endpoints: Sequence[str] | None = None, latency: dict[str, Any] | None = None
    ) -> Child:
        """An orchestrator candidate printing its events (``--events``); ``latency``
        is written to a file passed as ``--latency``."""
        if latency is not None:
            assert self.dir is not None, "a latency file needs the launcher's directory"
            path = self.dir / f"latency-{ident}.json"
            path.write_text(json.dumps(latency))
            extra = (*extra, "--latency", str(path))
        return await self.start("orchestrator", ident, "--events", *extra, endpoints=endpoints)

    def _shards(self) -> tuple[str, ...]:
        return ("--shards", str(self.shards)) if self.shards is not None else ()


class LabRoles(RoleLauncher):
    """Role processes placed in the lab's regions (``--app saga_apps:app``), each with
    its region's own member first."""

    def __init__(
        self, lab: RegionLab, started: list[Child], directory: Path, *, ns: str, ttl: int, shards: int | None = 1
    ) -> None:
        import saga_apps as apps  # the lab's roles run its sagas; other launchers need not import it

        super().__init__(
            started, endpoints=(), namespace=ns, ttl=ttl, env={apps.DIR_ENV: str(directory)}, directory=directory,
            lab=lab, shards=shards,
        )
        (directory / "latency.json").write_text(json.dumps(LATENCY))

    async def worker(self, region: str, ident: str, *extra: str, endpoints: Sequence[str] | None = None) -> Child:
        return await self.start("worker", ident, "--region", region, *extra, region=region, timeout=60)

    async def orchestrator(  # type: ignore[override]
        self, region: str, ident: str, *extra: str
    ) -> Child:
        """An orchestrator in ``region`` (its home region), with the lab's latencies
        unless ``extra`` says otherwise."""
        assert self.dir is not None
        argv = ["--events", "--home-region", region, *(extra or ("--latency", str(self.dir / "latency.json")))]
        return await self.start("orchestrator", ident, *argv, region=region, timeout=60)
