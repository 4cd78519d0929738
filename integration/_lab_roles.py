"""Role processes placed in the region lab's regions, and their JSON events."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import saga_apps as apps
from _children import Child

from whizorch.testing import RegionLab, eventually_async

__all__ = ["HERE", "LATENCY", "LabRoles", "events", "first_event"]

HERE = Path(__file__).resolve().parent
LATENCY = {"eu": {"us": 80, "ap": 200}, "us": {"eu": 80, "ap": 150}, "ap": {"eu": 200, "us": 150}}


class LabRoles:
    """Role processes placed in the lab's regions (``--app saga_apps:app``)."""

    def __init__(self, lab: RegionLab, started: list[Child], directory: Path, *, ns: str, ttl: int) -> None:
        self.lab = lab
        self._started = started
        self.dir = directory
        self.ns = ns
        self.ttl = ttl
        (directory / "latency.json").write_text(json.dumps(LATENCY))

    async def start(self, region: str, name: str, argv: list[str], ready: str) -> Child:
        env = self.lab.env(region)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
        env[apps.DIR_ENV] = str(self.dir)
        cmd = self.lab.command(region, [
            sys.executable, "-m", "whizorch", *argv, "--etcd", ",".join(self.lab.endpoints(region)),
            "--app", "saga_apps:app", "--namespace", self.ns, "--lease-ttl", str(self.ttl), "--id", name,
        ])  # fmt: skip
        child = await Child.start(name, cmd, env=env)
        self._started.append(child)
        await child.next_event(ready, 60)
        return child

    async def worker(self, region: str, name: str) -> Child:
        return await self.start(region, name, ["worker", "--region", region], "worker_ready")

    async def orchestrator(self, region: str, name: str, *extra: str) -> Child:
        argv = ["orchestrator", "--events", "--shards", "1", "--home-region", region, *(extra or ("--latency", str(self.dir / "latency.json")))]
        return await self.start(region, name, argv, "orchestrator_ready")


def events(child: Child, kind: str) -> list[dict[str, Any]]:
    """Every ``kind`` event the child printed so far."""
    out = []
    for _, line in child.lines:
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("event") == kind:
            out.append(ev)
    return out


async def first_event(child: Child, kind: str, timeout: float, **match: Any) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next((e for e in events(child, kind) if all(e.get(k) == v for k, v in match.items())), None)

    try:
        await eventually_async(lambda: find() is not None, timeout=timeout, interval=0.02)
    except AssertionError:
        raise AssertionError(f"no {kind} event {match} within {timeout}s\n{child.describe()}") from None
    found = find()
    assert found is not None
    return found
