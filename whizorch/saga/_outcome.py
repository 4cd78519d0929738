"""How one run of a step handler ended, as the worker records it: its output, or its
error with a bounded traceback from the handler's own frames."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import traceback
from typing import Any

import attrs

__all__ = ["ERROR_LIMIT", "TRACEBACK_LIMIT", "RunOutcome", "bounded", "handler_traceback"]

TRACEBACK_LIMIT = 2000
"""Characters of a handler's traceback kept with its result, in the saga record and in
the worker's log (the innermost frames and the exception are always kept)."""
ERROR_LIMIT = 1000
"""Characters of a handler's error message (``Type: message``) kept with its result."""
_ENGINE_DIRS = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep
    for path in (os.path.dirname(os.path.abspath(__file__)), asyncio.__file__, concurrent.futures.__file__)
)
"""Where the frames that call a handler live: whizorch's package, asyncio, the thread pool."""


@attrs.frozen(kw_only=True)
class RunOutcome:
    """How one run of a handler ended: what the worker records as its result."""

    ok: bool
    output: Any = None
    """The handler's return value (JSON), when ``ok``."""
    error: str | None = None
    error_type: str | None = None
    """The exception's class name (``TimeoutError``, ``UnknownSaga`` ...), when not ``ok``."""
    retryable: bool = False
    """Whether the step's retry policy lets a failure run again."""
    traceback: str | None = None
    """The handler's traceback (bounded), when it raised."""

    @classmethod
    def success(cls, output: Any = None) -> RunOutcome:
        return cls(ok=True, output=output)

    @classmethod
    def failure(
        cls, error: str, error_type: str, *, retryable: bool = False, traceback: str | None = None
    ) -> RunOutcome:
        return cls(ok=False, error=error, error_type=error_type, retryable=retryable, traceback=traceback)


def handler_traceback(exc: BaseException, limit: int = TRACEBACK_LIMIT) -> str:
    """``exc``'s traceback from the first frame of the user's code (the engine's and
    asyncio's frames that called the handler are left out), at most ``limit``
    characters: each part (a frame, the exception's message) is cut to a fraction of
    that, and past it the outer frames go first, so the innermost frames and the
    exception always stay."""
    te = traceback.TracebackException.from_exception(exc)
    frames = list(te.stack)
    first = next((i for i, f in enumerate(frames) if not f.filename.startswith(_ENGINE_DIRS)), 0)
    te.stack = traceback.StackSummary.from_list(frames[first:])
    part = max(80, limit // 4)
    chunks = [c if len(c) <= part else f"{c[:part]}... ({len(c) - part} characters cut)\n" for c in te.format()]
    if sum(map(len, chunks)) <= limit:
        return "".join(chunks)
    kept: list[str] = []
    budget = limit - len(chunks[0]) - 40
    for chunk in reversed(chunks[1:]):
        if len(chunk) > budget:
            break
        kept.insert(0, chunk)
        budget -= len(chunk)
    return f"{chunks[0]}  ... ({len(chunks) - 1 - len(kept)} parts cut)\n{''.join(kept)}"


def bounded(text: str, limit: int = ERROR_LIMIT) -> str:
    """``text``, cut past ``limit`` characters with a note of how much was cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} characters cut)"
