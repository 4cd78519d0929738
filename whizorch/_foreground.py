"""SIGINT/SIGTERM for a foreground command that starts something and runs until told
to stop (``whizorch dev``, ``whizorch lab``).

While it starts, a signal raises KeyboardInterrupt (unwinding the start, which kills
or removes what it made); once ``started`` is set, a signal sets ``stop`` instead,
and the command shuts down in its own time. The handlers are put back on exit. Off
the main thread (where Python takes no signal handlers) it installs none.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["Foreground"]


class Foreground:
    """``with Foreground() as fg:`` ... ``fg.started = True`` ... ``fg.stop.wait()``"""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.started = False
        self.received: list[str] = []
        """The names of the signals received, in order."""
        self._restore: dict[int, Any] = {}

    @property
    def last(self) -> str:
        """The last signal's name (SIGINT when none came: Ctrl-C as Python saw it)."""
        return self.received[-1] if self.received else "SIGINT"

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signal.Signals(signum).name)
        if not self.started:
            raise KeyboardInterrupt
        self.stop.set()

    def __enter__(self) -> Foreground:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._restore[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        for signum, handler in self._restore.items():
            signal.signal(signum, handler)
        self._restore.clear()
