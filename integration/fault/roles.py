"""The role processes (``whizorch worker`` / ``whizorch orchestrator``), supervised.

Every role is a real CLI process (``python -m whizorch ...``, `Child` from
``integration/_children.py``) reaching etcd through the proxies, in an endpoint order
of its own so that roles sit on different members. `Deployment` starts them, kills,
pauses and resumes them for the nemesis, and restarts a killed one as a process
supervisor would. A process that exits when nobody killed it is recorded as a
`RoleExit` (with its stderr tail) and restarted too, so one crash does not hide the
rest of the run. Nothing outlives `Deployment.aclose`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _children import Child
from _roles import RoleLauncher

from .checker import RoleExit

__all__ = ["Deployment", "Role", "RoleSpec"]

READY_TIMEOUT_S = 30.0
_CRASH_RESTART_S = 0.5
_STDERR_KEPT = 2000
"""stderr lines kept per incarnation: a failed seed's role logs (``write_logs``)."""


@dataclass(frozen=True)
class RoleSpec:
    """What one role is: ``worker`` (with its region) or ``orchestrator``."""

    name: str
    kind: str
    region: str | None
    rotation: int
    """Which proxy comes first in its endpoint list (the member it sits on)."""


@dataclass
class Role:
    """One role and its process incarnations."""

    spec: RoleSpec
    child: Child | None = None
    state: str = "new"
    """new | running | paused | killed | crashed"""
    incarnations: list[Child] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    expected_exit: bool = False
    started_rev: int = 0
    """etcd's revision just before the current process started: keys it made are newer."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None and self.child.running else None


class Deployment:
    """Starts and controls the role processes; ``async with Deployment(...) as d``."""

    def __init__(
        self,
        specs: Sequence[RoleSpec],
        *,
        endpoints: Sequence[str],
        namespace: str,
        ttl_s: int,
        app: str,
        env: Mapping[str, str],
        log: Callable[[str], None],
        revision: Callable[[], Awaitable[int]],
        shards: int | None = None,
    ) -> None:
        self.roles = {s.name: Role(s) for s in specs}
        self.endpoints = list(endpoints)
        self._launcher = RoleLauncher([], endpoints=endpoints, namespace=namespace, ttl=ttl_s, app=app, shards=shards)
        """Builds the command lines, ``--shards`` included (the environment is the
        suite's own: ``env``)."""
        self.namespace = namespace
        self.ttl_s = ttl_s
        self.app = app
        self.env = dict(env)
        self.exits: list[RoleExit] = []
        self.failures: list[str] = []
        """Restarts that did not come back (no ready line in time)."""
        self._log = log
        self._revision = revision
        self._watchers: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- processes ---------------------------------------------------------------------

    def endpoints_for(self, spec: RoleSpec) -> list[str]:
        n = len(self.endpoints)
        return [self.endpoints[(spec.rotation + i) % n] for i in range(n)]

    def _argv(self, spec: RoleSpec) -> list[str]:
        endpoints = self.endpoints_for(spec)
        if spec.kind == "worker":
            assert spec.region is not None
            return self._launcher.argv("worker", spec.name, "--no-tracing", "--region", spec.region, endpoints=endpoints)
        return self._launcher.argv("orchestrator", spec.name, "--no-tracing", "--events", endpoints=endpoints)

    async def _spawn(self, role: Role) -> None:
        """Start a new incarnation and wait for its ready line (caller holds the lock)."""
        env = dict(self.env)
        env["FAULT_LEDGER_ETCD"] = ",".join(self.endpoints_for(role.spec))
        role.started_rev = await self._revision()
        child = await Child.start(role.name, self._argv(role.spec), env=env, stderr_tail=_STDERR_KEPT)
        role.child = child
        role.incarnations.append(child)
        role.expected_exit = False
        role.state = "running"
        watcher = asyncio.ensure_future(self._watch(role, child))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        ready = "worker_ready" if role.spec.kind == "worker" else "orchestrator_ready"
        try:
            await child.next_event(ready, READY_TIMEOUT_S)
        except AssertionError as exc:
            self.failures.append(f"{role.name} (pid {child.pid}) did not print {ready}: {str(exc)[:2000]}")
            self._log(f"  !! {role.name} did not come up: {str(exc).splitlines()[0]}")

    async def start_all(self) -> None:
        async def one(role: Role) -> None:
            async with role.lock:
                await self._spawn(role)

        await asyncio.gather(*(one(r) for r in self.roles.values()))

    async def _watch(self, role: Role, child: Child) -> None:
        """Notice an incarnation that exits when nobody killed it; restart it."""
        code = await child.process.wait()
        if self._closed or role.child is not child or role.expected_exit:
            return
        with contextlib.suppress(AssertionError):
            await child.wait_exit(5.0)  # its last stderr lines
        role.state = "crashed"
        self.exits.append(RoleExit(role.name, child.pid, code, time.time(), tuple(child.stderr)))
        self._log(f"  !! {role.name} (pid {child.pid}) exited by itself with status {code}; restarting it")
        await asyncio.sleep(_CRASH_RESTART_S)  # ok: a supervisor's restart delay
        async with role.lock:
            if not self._closed and role.child is child:
                await self._spawn(role)

    # -- the nemesis's hands -----------------------------------------------------------

    async def kill(self, role: Role) -> int | None:
        """SIGKILL the role's process (paused or not) and reap it."""
        child = role.child
        if child is None or not child.running:
            return None
        role.expected_exit = True
        role.state = "killed"
        pid = child.pid
        await child.stop()
        return pid

    async def restart(self, role: Role) -> None:
        """Start a killed role again (waits for its ready line)."""
        await self._spawn(role)

    def pause(self, role: Role) -> int | None:
        child = role.child
        if child is None or not child.running:
            return None
        child.send(signal.SIGSTOP)
        role.state = "paused"
        return child.pid

    def resume(self, role: Role) -> None:
        child = role.child
        if child is not None and child.running:
            child.send(signal.SIGCONT)
        if role.state == "paused":
            role.state = "running"

    # -- views -------------------------------------------------------------------------

    def of_kind(self, kind: str) -> list[Role]:
        return [r for r in self.roles.values() if r.spec.kind == kind]

    def live_workers(self) -> dict[str, int]:
        """Region -> worker processes running and not paused."""
        out: dict[str, int] = {}
        for r in self.of_kind("worker"):
            assert r.spec.region is not None
            out.setdefault(r.spec.region, 0)
            if r.state == "running" and r.child is not None and r.child.running:
                out[r.spec.region] += 1
        return out

    def not_running(self) -> list[str]:
        return [r.name for r in self.roles.values() if r.child is None or not r.child.running]

    def stderr_tails(self) -> dict[str, list[str]]:
        return {r.name: list(r.child.stderr) for r in self.roles.values() if r.child is not None and r.child.stderr}

    def write_logs(self, directory: Path) -> None:
        """Every incarnation's stdout lines (timestamped) and stderr tail, one file each
        (``<role>-<pid>.log``), for a failed seed's work directory."""
        directory.mkdir(parents=True, exist_ok=True)
        for r in self.roles.values():
            for child in r.incarnations:
                out = [f"{t:.3f} {line}" for t, line in child.lines]
                (directory / f"{r.name}-{child.pid}.log").write_text(
                    "== stdout ==\n" + "\n".join(out) + "\n== stderr (tail) ==\n" + "\n".join(child.stderr) + "\n"
                )

    def events(self, *kinds: str) -> list[tuple[str, dict[str, Any]]]:
        """The ``--events`` lines of these kinds the orchestrators printed: (role, event)."""
        out = []
        for r in self.of_kind("orchestrator"):
            for child in r.incarnations:
                for _, line in child.lines:
                    with contextlib.suppress(ValueError):
                        event = json.loads(line)
                        if isinstance(event, dict) and event.get("event") in kinds:
                            out.append((r.name, event))
        return out

    # -- teardown ----------------------------------------------------------------------

    async def __aenter__(self) -> Deployment:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Kill every incarnation (resumed first) and reap it; stop the watchers."""
        self._closed = True
        watchers = list(self._watchers)
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        children = [c for r in self.roles.values() for c in r.incarnations]
        await asyncio.gather(*(c.stop() for c in children), return_exceptions=True)


def role_env(
    base: Mapping[str, str], *, pythonpath: Sequence[Path], ledger_dir: Path, prefix: str, delay_s: float
) -> dict[str, str]:
    """The environment of every role: the app importable, the ledger's settings.

    ``PYTHONSAFEPATH`` keeps the working directory off the roles' ``sys.path``, so the
    whizorch they import is the one ``pythonpath`` names first (a snapshot of a
    commit, for the runner's ``--commit``) or else the installed one.
    """
    env = {k: v for k, v in base.items() if not k.startswith(("WHIZORCH_", "FAULT_LEDGER_"))}
    env["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in pythonpath), *([base["PYTHONPATH"]] if base.get("PYTHONPATH") else [])])
    env["PYTHONSAFEPATH"] = "1"
    env["FAULT_LEDGER_DIR"] = str(ledger_dir)
    env["FAULT_LEDGER_PREFIX"] = prefix
    env["FAULT_LEDGER_DELAY_S"] = str(delay_s)
    return env
