"""Split-brain detection: a leader that loses contact with etcd's quorum stops writing.

A lease alone detects a partition only when the session is lost, ``TTL - margin``
after the last keepalive (seconds), and etcd refuses TTLs below 1.5 x its election
timeout. The leader therefore also probes the quorum itself: a linearizable read (it
needs etcd's leader and a quorum to answer) every ``deadline / 10``, each bounded by
the deadline. When no probe has *answered* in the last ``deadline`` seconds, the
leader is cut off (or etcd has no leader): it enters **safe mode** and pauses every
write until contact returns. Writes already in flight are fenced as always (a new
leader's term makes them fail); safe mode just stops sending more. If contact returns
while the session still lives, writes resume (no new election, no rebuild); if it
does not, the session is lost and the node steps down as before.

The first answer gets twice the deadline. etcd serves linearizable reads in rounds (one
read-index request to the Raft leader and a heartbeat to a quorum at a time); a read
that arrives while a round is in flight waits for the next one. Once probes flow, an
answer arrives every round; but the first probe of a term can wait for two rounds,
and with etcd's leader a WAN away (the lab's eu reading through ap: about 350 ms a
round) that is longer than the deadline, so a node that just won leadership would
enter safe mode for nothing. A cut at the very start of a term is therefore detected
within twice the deadline, later ones within the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator

from whizorch.errors import WhizorchError

__all__ = ["ContactGate", "ContactMonitor"]

log = logging.getLogger("whizorch.saga.orchestrator")


class ContactMonitor:
    """Probes the quorum while leading; ``ok`` is set while contact holds."""

    def __init__(
        self,
        probe: Callable[[float], Awaitable[object]],
        *,
        deadline_s: float,
        on_change: Callable[[bool, float], None],
    ) -> None:
        self._probe = probe
        self.deadline_s = deadline_s
        self._on_change = on_change
        self.ok = asyncio.Event()
        self.ok.set()  # leadership was just won with quorum writes: contact holds
        self._last_ok = 0.0
        self._answered = False
        """Whether a probe has answered since `run` began (until then, twice the deadline)."""
        self._excused = 0
        self.lost_at: float | None = None
        """Loop time safe mode began (None while in contact)."""

    async def run(self) -> None:
        """Probe until cancelled (an owned task of the leadership)."""
        loop = asyncio.get_running_loop()
        self._last_ok = loop.time()
        interval = self.deadline_s / 10
        probes: set[asyncio.Task[None]] = set()
        try:
            while True:
                task = loop.create_task(self._one(loop))
                probes.add(task)
                task.add_done_callback(probes.discard)
                await asyncio.sleep(interval)  # ok: the probe period
                self._judge(loop.time())
        finally:
            for t in list(probes):
                t.cancel()
            await asyncio.gather(*probes, return_exceptions=True)

    async def _one(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            async with asyncio.timeout(self.deadline_s):
                await self._probe(self.deadline_s)
        except (WhizorchError, TimeoutError):
            return
        # the answer's arrival, not the probe's sending: answers come every period
        # however far etcd's leader is, so a slow but live quorum never looks lost, and
        # a cut one is noticed a deadline after its last answer whatever the distance
        self._last_ok = loop.time()
        self._answered = True
        self._judge(self._last_ok)

    @contextlib.contextmanager
    def excused(self) -> Iterator[None]:
        """While this block runs, silence is expected (the orchestrator itself moves
        etcd's Raft leader, which stalls every request for an election): no safe mode."""
        self._excused += 1
        try:
            yield
        finally:
            self._excused -= 1
            self._last_ok = asyncio.get_running_loop().time()

    def _judge(self, now: float) -> None:
        if self._excused:
            self._last_ok = now
        silent = now - self._last_ok
        allowed = self.deadline_s if self._answered else 2 * self.deadline_s  # see the module docstring
        if self.ok.is_set() and silent > allowed:
            self.ok.clear()
            self.lost_at = now
            log.warning("no contact with etcd's quorum for %.3fs: safe mode, writes paused", silent)
            self._on_change(False, silent)
        elif not self.ok.is_set() and silent <= self.deadline_s:
            paused = now - (self.lost_at or now)
            self.ok.set()
            self.lost_at = None
            log.warning("contact with etcd's quorum is back after %.3fs: writes resume", paused)
            self._on_change(True, paused)


class ContactGate:
    """A process's split-brain gate: while the process leads a shard, a ContactMonitor
    probes the quorum; every shard leader's writes wait on the gate in safe mode."""

    def __init__(
        self, probe: Callable[[float], Awaitable[object]], *, deadline_s: float | None,
        on_change: Callable[[bool, float], None],
    ) -> None:
        self._probe = probe
        self.deadline_s = deadline_s
        """None: no probing, never safe mode."""
        self._on_change = on_change
        self.monitor: ContactMonitor | None = None
        self._task: asyncio.Future[None] | None = None

    def up(self) -> None:
        """Start probing (idempotent)."""
        if self.deadline_s is None or self._task is not None:
            return
        self.monitor = ContactMonitor(self._probe, deadline_s=self.deadline_s, on_change=self._on_change)
        self._task = asyncio.ensure_future(self.monitor.run())

    async def down(self) -> None:
        """Stop probing (idempotent)."""
        task, self._task = self._task, None
        self.monitor = None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    @property
    def in_safe_mode(self) -> bool:
        """Writes are paused for lack of quorum contact."""
        return self.monitor is not None and not self.monitor.ok.is_set()

    def excused(self) -> contextlib.AbstractContextManager[None]:
        """While this block runs, silence is expected (see ContactMonitor.excused)."""
        return self.monitor.excused() if self.monitor is not None else contextlib.nullcontext()

    async def wait(self, lost: asyncio.Event) -> bool:
        """True at once while in contact; in safe mode, wait until contact returns
        (True) or ``lost`` is set (False: the leadership ended in safe mode)."""
        monitor = self.monitor
        if monitor is None or monitor.ok.is_set():
            return True
        back = asyncio.ensure_future(monitor.ok.wait())
        gone = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait({back, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (back, gone):
                f.cancel()
            await asyncio.gather(back, gone, return_exceptions=True)
        return monitor.ok.is_set() and monitor is self.monitor
