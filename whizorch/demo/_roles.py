"""The demo's role processes: workers and orchestrator candidates as real ``whizorch``
processes, their JSON event lines read as they come.

Each role runs ``python -m whizorch worker|orchestrator ...`` in a session of its own (a
Ctrl-C in the terminal reaches the demo, which then stops them itself), with stdout a
pipe (one JSON event a line) and stderr in a log file. On Linux each one gets SIGKILL
when the demo dies, however it dies (``setpriv --pdeathsig KILL``, as
`whizorch.testing` starts etcd members; a tiny ``prctl`` exec wrapper where setpriv is
missing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from whizorch.testing import dying_with_parent, log_tail

__all__ = ["Role", "RoleFailed"]

class RoleFailed(Exception):
    """A role process exited or stayed silent when the demo needed it."""


class Role:
    """A worker or orchestrator process; ``events`` collects its JSON lines with the
    monotonic time each was read (``_at``)."""

    def __init__(
        self,
        name: str,
        kind: str,
        process: asyncio.subprocess.Process,
        log_path: Path,
        on_event: Callable[[Role, dict[str, Any]], None],
        region: str | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        """``worker`` or ``orchestrator``."""
        self.region = region
        self.process = process
        self.log_path = log_path
        self.pid = process.pid
        self.events: list[dict[str, Any]] = []
        self.killed_at: float | None = None
        """Monotonic time of the demo's SIGKILL, if it killed this role."""
        self._on_event = on_event
        self._grew = asyncio.Event()
        assert process.stdout is not None
        self._reader = asyncio.ensure_future(self._read(process.stdout))

    @classmethod
    async def start(
        cls,
        name: str,
        kind: str,
        args: Sequence[str],
        *,
        log_dir: Path,
        on_event: Callable[[Role, dict[str, Any]], None],
        region: str | None = None,
        place: Sequence[str] = (),
    ) -> Role:
        """Start ``python -m whizorch <args>``, after the ``place`` argv prefix when given
        (``ip netns exec <namespace>``: the process runs in a region of the lab)."""
        log_path = log_dir / f"{name}.log"
        with log_path.open("ab") as log:  # a local file: opening it does not block
            process = await asyncio.create_subprocess_exec(
                *dying_with_parent([*place, sys.executable, "-m", "whizorch", *args]),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        return cls(name, kind, process, log_path, on_event, region)

    async def _read(self, stream: asyncio.StreamReader) -> None:
        try:
            while line := await stream.readline():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(event, dict):
                    continue
                event["_at"] = time.monotonic()
                self.events.append(event)
                self._on_event(self, event)
                self._grew.set()
        finally:
            self._grew.set()

    @property
    def running(self) -> bool:
        """The process has not exited."""
        return self.process.returncode is None

    def describe(self) -> str:
        """Name, pid, exit status and the tail of its stderr (for error messages)."""
        tail = "\n".join(f"    {line}" for line in log_tail(self.log_path, 15)) or "    (nothing)"
        return f"{self.name} (pid {self.pid}, exit {self.process.returncode}), stderr tail:\n{tail}"

    async def wait_event(self, kind: str, timeout_s: float, *, since: float = 0.0) -> dict[str, Any]:
        """The first ``kind`` event read at or after monotonic time ``since``."""
        deadline = time.monotonic() + timeout_s
        while True:
            for event in self.events:
                if event.get("event") == kind and event["_at"] >= since:
                    return event
            left = deadline - time.monotonic()
            if self._reader.done() or left <= 0:
                why = "exited" if self._reader.done() else f"printed no {kind!r} within {timeout_s:g}s"
                raise RoleFailed(f"{self.name} {why}: {self.describe()}")
            self._grew.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._grew.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no drain, no resign, its lease left to expire."""
        self.killed_at = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    async def stop(self, grace_s: float) -> None:
        """SIGTERM (a worker drains, an orchestrator resigns), SIGKILL after ``grace_s``;
        reap the process and read its output to the end."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(grace_s):
                    await self.process.wait()
            except TimeoutError:
                pass
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        await self.process.wait()
        try:
            async with asyncio.timeout(5.0):
                await asyncio.shield(self._reader)
        except TimeoutError:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
