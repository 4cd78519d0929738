"""Poll a condition until it holds or a deadline passes: tests never sleep for consistency."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

__all__ = ["eventually", "eventually_async"]

T = TypeVar("T")

_NOT_YET = object()


def _settled(result: object) -> bool:
    # None is an assert-style check that did not raise; any other falsy value is "not yet"
    return result is None or bool(result)


def _timed_out(
    fn: object, timeout: float, attempts: int, last: object, message: str | None
) -> AssertionError:
    what = message or getattr(fn, "__qualname__", repr(fn))
    seen = "" if last is _NOT_YET else f"; last result: {last!r}"
    return AssertionError(f"not true within {timeout:g}s after {attempts} attempts: {what}{seen}")


def eventually(
    predicate: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    retry_on: tuple[type[BaseException], ...] = (AssertionError,),
    message: str | None = None,
) -> T:
    """Call ``predicate`` until it holds, and return its result.

    It holds when it returns a truthy value, or returns ``None`` without raising (an
    assert-style check). A falsy result (``False``, ``0``, ``[]``) or an exception in
    ``retry_on`` means "not yet"; other exceptions propagate at once. After
    ``timeout`` seconds an `AssertionError` is raised, chained to the last exception.
    To wait for a value that may be ``None``, return ``value is not None``.
    """
    deadline = time.monotonic() + timeout
    attempts = 0
    last: object = _NOT_YET
    error: BaseException | None = None
    while True:
        attempts += 1
        try:
            result = predicate()
        except retry_on as exc:
            error, last = exc, _NOT_YET
        else:
            if _settled(result):
                return result
            error, last = None, result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timed_out(predicate, timeout, attempts, last, message) from error
        time.sleep(min(interval, remaining))


@overload
async def eventually_async(
    predicate: Callable[[], Awaitable[T]],
    *,
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    retry_on: tuple[type[BaseException], ...] = ...,
    message: str | None = ...,
) -> T: ...


@overload
async def eventually_async(
    predicate: Callable[[], T],
    *,
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    retry_on: tuple[type[BaseException], ...] = ...,
    message: str | None = ...,
) -> T: ...


async def eventually_async(
    predicate: Callable[[], Any],
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 - the deadline is what this function is about
    interval: float = 0.05,
    retry_on: tuple[type[BaseException], ...] = (AssertionError,),
    message: str | None = None,
) -> Any:
    """The async `eventually`: ``predicate`` may be a plain or an async function.

    Each call that returns an awaitable is awaited (and must finish within what is
    left of ``timeout``); the loop sleeps with ``asyncio.sleep`` between attempts.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    attempts = 0
    last: object = _NOT_YET
    error: BaseException | None = None
    while True:
        attempts += 1
        attempt_deadline = asyncio.timeout_at(deadline)
        try:
            result = predicate()
            if inspect.isawaitable(result):
                async with attempt_deadline:
                    result = await result
        except TimeoutError as exc:
            if not attempt_deadline.expired() and not isinstance(exc, retry_on):
                raise
            if error is None or not attempt_deadline.expired():
                error = exc  # an attempt cut off by the deadline keeps the last real failure
            last = _NOT_YET
        except retry_on as exc:
            error, last = exc, _NOT_YET
        else:
            if _settled(result):
                return result
            error, last = None, result
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise _timed_out(predicate, timeout, attempts, last, message) from error
        await asyncio.sleep(min(interval, remaining))
