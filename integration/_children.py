"""Child processes for integration tests: stdout read line by line with deadlines.

A `Child` owns its reader tasks and never outlives the test: `Child.stop` resumes a
paused child (SIGCONT), kills its whole process group (SIGKILL; an ``etcdctl lock -- CMD``
leaves no orphaned ``CMD`` behind), reaps it and reads its pipes to the end, so no
transport or pipe is left for the garbage collector to warn about. Children also die
with the test runner on Linux (``PR_SET_PDEATHSIG``, as etcd members do).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from whizorch.testing import dying_with_parent

__all__ = ["Child", "children"]

_STDERR_TAIL = 30

class Child:
    """A child process; its stdout lines are collected as they come.

    ``lines`` holds every stdout line so far with the wall-clock time it was read;
    `next_line` and `next_event` consume them in order.
    """

    def __init__(self, name: str, process: asyncio.subprocess.Process, *, stderr_tail: int = _STDERR_TAIL) -> None:
        self.name = name
        self.process = process
        self.lines: list[tuple[float, str]] = []
        self.stderr: list[str] = []
        self.stderr_tail = stderr_tail
        """How many of the last stderr lines are kept."""
        self._pos = 0
        self._grew = asyncio.Event()
        self._eof = False
        assert process.stdout is not None and process.stderr is not None
        self._readers = [
            asyncio.ensure_future(self._read_stdout(process.stdout)),
            asyncio.ensure_future(self._read_stderr(process.stderr)),
        ]

    @classmethod
    async def start(
        cls, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None, stderr_tail: int = _STDERR_TAIL
    ) -> Child:
        """Start ``argv`` in a process group of its own, stdin closed (the last
        ``stderr_tail`` lines of its stderr kept)."""
        process = await asyncio.create_subprocess_exec(
            *dying_with_parent(argv),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
        return cls(name, process, stderr_tail=stderr_tail)

    async def _read_stdout(self, stream: asyncio.StreamReader) -> None:
        try:
            while line := await stream.readline():
                self.lines.append((time.time(), line.decode(errors="replace").rstrip("\n")))
                self._grew.set()
        finally:
            self._eof = True
            self._grew.set()

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.stderr.append(line.decode(errors="replace").rstrip("\n"))
            del self.stderr[: -self.stderr_tail]

    # -- state -------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The child's process id (also its process group id)."""
        return self.process.pid

    @property
    def running(self) -> bool:
        """Whether the child has not exited (a paused child is running)."""
        return self.process.returncode is None

    def describe(self) -> str:
        """What the child printed, for assertion messages."""
        out = "\n".join(f"    {line}" for _, line in self.lines) or "    (nothing)"
        err = "\n".join(f"    {line}" for line in self.stderr) or "    (nothing)"
        return (
            f"{self.name} (pid {self.pid}, exit {self.process.returncode}):\n"
            f"  stdout:\n{out}\n  stderr (tail):\n{err}"
        )

    # -- reading -----------------------------------------------------------------------

    async def next_line(self, timeout: float) -> tuple[float, str]:
        """The next unread stdout line and when it was read; AssertionError after
        ``timeout`` seconds or at end of output."""
        try:
            async with asyncio.timeout(timeout):
                while self._pos >= len(self.lines):
                    if self._eof:
                        raise AssertionError(f"{self.name} ended its output\n{self.describe()}")
                    self._grew.clear()
                    await self._grew.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: no new line within {timeout:g}s\n{self.describe()}"
            ) from None
        item = self.lines[self._pos]
        self._pos += 1
        return item

    async def next_event(self, kind: str, timeout: float) -> dict[str, Any]:
        """The next JSON line whose ``event`` is ``kind`` (earlier ones are skipped)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            try:
                _, line = await self.next_line(max(0.0, left))
            except AssertionError as exc:
                raise AssertionError(
                    f"{self.name}: no {kind!r} event within {timeout:g}s; {exc}"
                ) from None
            event: dict[str, Any] = json.loads(line)
            if event.get("event") == kind:
                return event

    def _timed_events(self) -> list[tuple[float, dict[str, Any]]]:
        out = []
        for t, line in self.lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # not an event line
            if isinstance(event, dict):
                out.append((t, event))
        return out

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every JSON line read so far (of one kind, when given)."""
        return [e for _, e in self._timed_events() if kind is None or e.get("event") == kind]

    def find_event(self, kind: str, **match: Any) -> tuple[float, dict[str, Any]] | None:
        """The first ``kind`` event printed so far whose fields match ``match``, with
        the wall-clock time it was read; None when there is none yet."""
        for t, event in self._timed_events():
            if event.get("event") == kind and all(event.get(k) == v for k, v in match.items()):
                return t, event
        return None

    async def first_event(self, kind: str, timeout: float, **match: Any) -> tuple[float, dict[str, Any]]:
        """`find_event`, waiting up to ``timeout`` seconds for it (wherever it is in
        the output, unlike `next_event`)."""
        try:
            async with asyncio.timeout(timeout):
                while (found := self.find_event(kind, **match)) is None:
                    if self._eof:
                        raise AssertionError(f"{self.name} ended its output")
                    self._grew.clear()
                    await self._grew.wait()
        except (TimeoutError, AssertionError) as exc:
            why = f"within {timeout:g}s" if isinstance(exc, TimeoutError) else f"({exc})"
            raise AssertionError(f"no {kind!r} event {match} {why}\n{self.describe()}") from None
        return found

    # -- control -----------------------------------------------------------------------

    def send(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the child itself (not its group)."""
        if self.running:
            os.kill(self.pid, sig)

    async def wait_exit(self, timeout: float) -> int:
        """Wait for the child to exit and its output to end; return its exit status."""
        try:
            async with asyncio.timeout(timeout):
                code = await self.process.wait()
                await asyncio.gather(*self._readers)
        except TimeoutError:
            raise AssertionError(
                f"{self.name} did not exit within {timeout:g}s\n{self.describe()}"
            ) from None
        return code

    async def stop(self) -> None:
        """Resume (if paused) and kill the child's process group; reap it; drain pipes."""
        if self.running:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, sig)
        await self.process.wait()
        try:
            async with asyncio.timeout(5.0):
                await asyncio.gather(*self._readers, return_exceptions=True)
        except TimeoutError:  # something the child started holds a pipe open
            for reader in self._readers:
                reader.cancel()
            await asyncio.gather(*self._readers, return_exceptions=True)


@contextlib.asynccontextmanager
async def children() -> AsyncIterator[list[Child]]:
    """A list to put started children in; every one is stopped on the way out."""
    started: list[Child] = []
    try:
        yield started
    finally:
        await asyncio.gather(*(child.stop() for child in started))
