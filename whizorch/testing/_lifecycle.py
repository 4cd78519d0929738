"""The lifecycle every harness shares: local clusters, container clusters, region labs.

New, starting, open, closed: a harness starts once (a failed start leaves it closed,
nothing behind), closing twice is fine, and it is a context manager both ways (the
async forms run the blocking work in a thread, shielded, so a cancelled caller never
leaves half a cluster). Every harness started and not yet closed is in one registry,
which an ``atexit`` hook empties (registered with the first start), so an interpreter
that exits without closing still removes processes, containers, namespaces and
temporary directories.
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import contextlib
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

from whizorch.errors import ClosedError
from whizorch.testing._member import LocalClusterError

__all__ = ["Harness", "shielded_thread"]

T = TypeVar("T")
State = Literal["new", "starting", "open", "closed"]

_live: dict[int, Harness] = {}
_live_lock = threading.Lock()
_atexit_registered = False


def _register(harness: Harness) -> None:
    global _atexit_registered
    with _live_lock:
        if not _atexit_registered:
            atexit.register(_close_all_at_exit)
            _atexit_registered = True
        _live[id(harness)] = harness


def _unregister(harness: Harness) -> None:
    with _live_lock:
        _live.pop(id(harness), None)


def live() -> list[Harness]:
    """The harnesses started and not yet closed, oldest first."""
    with _live_lock:
        return list(_live.values())


def _close_all_at_exit() -> None:
    with _live_lock:
        harnesses = list(_live.values())
        _live.clear()
    for harness in reversed(harnesses):  # the newest first: a lab's cluster before the lab
        with contextlib.suppress(Exception):  # exiting: remove what can be removed
            harness._abandon()


def _consume(task: asyncio.Future[Any]) -> None:
    # a shielded thread's outcome is read here when its awaiter was cancelled
    if not task.cancelled():
        task.exception()


async def shielded_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a worker thread that runs to its end even if the
    awaiting task is cancelled."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    task.add_done_callback(_consume)
    return await asyncio.shield(task)


class Harness(abc.ABC):
    """The shared lifecycle. A subclass says what starting (`_start`) and stopping
    (`_stop`, which runs after a failed start too) mean; `_abandon` is the ``atexit``
    path (by default `_stop`)."""

    WHAT = "harness"
    """What the harness is called in messages ("cluster", "region lab")."""

    def __init__(self) -> None:
        self._state: State = "new"
        self._lock = threading.RLock()
        self._closing = threading.Event()
        """Set as soon as a close begins, so waits in other threads give up at once."""

    @abc.abstractmethod
    def _start(self) -> None:
        """Bring everything up; raise on failure (`_stop` then cleans up)."""

    @abc.abstractmethod
    def _stop(self) -> None:
        """Take everything down and delete what was made (also after a failed start)."""

    def _abandon(self) -> None:
        """The interpreter exits with the harness open: remove what can be removed."""
        self._closing.set()
        self._stop()
        self._state = "closed"

    @property
    def is_open(self) -> bool:
        """Whether the harness has started and is not closed."""
        return self._state == "open"

    def _check_open(self) -> None:
        """Refuse use before start and after close (waits inside a start are fine)."""
        if self._state == "closed":
            raise ClosedError(f"the {self.WHAT} is closed")
        if self._state == "new":
            raise ClosedError(f"the {self.WHAT} has not been started")

    def start(self) -> Self:
        """Start and wait until ready; return ``self``. A harness starts once: after a
        failed start it is closed, with nothing left running."""
        with self._lock:
            if self._state == "closed":
                raise ClosedError(f"the {self.WHAT} is closed; make a new {type(self).__name__}")
            if self._state != "new":
                raise LocalClusterError(f"the {self.WHAT} is already started")
            self._state = "starting"
            _register(self)
            try:
                self._start()
            except BaseException:
                try:
                    self._stop()
                finally:
                    self._state = "closed"
                    _unregister(self)
                raise
            self._state = "open"
        return self

    def _close(self, stop: Callable[[], None]) -> None:
        self._closing.set()
        with self._lock:
            if self._state == "closed":
                return
            if self._state == "new":
                self._state = "closed"
                return
            try:
                stop()
            finally:
                self._state = "closed"
                _unregister(self)

    def close(self) -> None:
        """Stop everything and delete what was made. Closing twice is fine."""
        self._close(self._stop)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def astart(self) -> Self:
        """`start` in a worker thread; if cancelled, the half-started harness is closed."""
        try:
            return await shielded_thread(self.start)
        except asyncio.CancelledError:
            await shielded_thread(self.close)
            raise

    async def aclose(self) -> None:
        """`close` in a worker thread (it finishes even if the caller is cancelled)."""
        self._closing.set()
        await shielded_thread(self.close)

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
