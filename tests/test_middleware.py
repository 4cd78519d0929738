"""The middleware pipeline: order, call_next once, and guarded saga-event middleware."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from whizorch.errors import ConfigError
from whizorch.saga import LeadershipObserver, RoleObserver
from whizorch.saga._middleware import (
    attach_middleware,
    check_middleware,
    leadership_changed,
    run_guarded,
    run_pipeline,
)


def recorder(name: str, log: list[str]) -> Any:
    async def mw(ctx: Any, call_next: Any) -> Any:
        log.append(f"{name}>")
        result = await call_next()
        log.append(f"<{name}")
        return f"{name}({result})"

    return mw


async def test_pipeline_runs_outermost_first_and_returns_through_every_layer() -> None:
    """The first middleware in the list wraps the rest; results flow back out through each."""
    log: list[str] = []

    async def final() -> str:
        log.append("final")
        return "x"

    out = await run_pipeline([recorder("a", log), recorder("b", log)], object(), final)
    assert out == "a(b(x))"
    assert log == ["a>", "b>", "final", "<b", "<a"]


async def test_no_middleware_calls_final_directly() -> None:
    """An empty pipeline is just the call."""

    async def final() -> int:
        return 7

    assert await run_pipeline((), None, final) == 7
    assert await run_guarded((), None, final) == 7


async def test_call_next_twice_raises() -> None:
    """A middleware may not run the rest of the pipeline twice."""

    async def twice(ctx: Any, call_next: Any) -> Any:
        await call_next()
        return await call_next()

    async def final() -> int:
        return 1

    with pytest.raises(RuntimeError, match="called call_next twice"):
        await run_pipeline([twice], None, final)


async def test_step_pipeline_propagates_middleware_errors() -> None:
    """In a step pipeline a middleware's exception is the step's failure."""

    async def broken(ctx: Any, call_next: Any) -> Any:
        raise ValueError("mw broke")

    async def final() -> int:
        raise AssertionError("not reached")

    with pytest.raises(ValueError, match="mw broke"):
        await run_pipeline([broken], None, final)


async def test_guarded_applies_the_transition_when_middleware_raises_before(caplog: pytest.LogCaptureFixture) -> None:
    """A saga-event middleware that raises before call_next cannot lose the transition."""
    calls: list[int] = []

    async def broken(ctx: Any, call_next: Any) -> Any:
        raise ValueError("observer bug")

    async def final() -> str:
        calls.append(1)
        return "applied"

    with caplog.at_level(logging.ERROR, logger="whizorch.saga.middleware"):
        assert await run_guarded([broken], None, final) == "applied"
    assert calls == [1]
    assert "saga middleware failed" in caplog.text


async def test_guarded_applies_the_transition_when_middleware_skips_it() -> None:
    """A middleware that returns without calling call_next still gets the event applied, once."""
    calls: list[int] = []

    async def skip(ctx: Any, call_next: Any) -> Any:
        return "ignored"

    async def final() -> str:
        calls.append(1)
        return "applied"

    assert await run_guarded([skip], None, final) == "applied"
    assert calls == [1]


async def test_guarded_logs_errors_raised_after_the_transition(caplog: pytest.LogCaptureFixture) -> None:
    """An error after call_next returned is logged; the transition's result is returned, final ran once."""
    calls: list[int] = []

    async def late(ctx: Any, call_next: Any) -> Any:
        await call_next()
        raise KeyError("after")

    async def final() -> str:
        calls.append(1)
        return "applied"

    with caplog.at_level(logging.ERROR, logger="whizorch.saga.middleware"):
        assert await run_guarded([late], None, final) == "applied"
    assert calls == [1]


async def test_guarded_propagates_the_transitions_own_error_even_if_swallowed() -> None:
    """The transition's exception reaches the engine unchanged, whatever the middleware does with it."""

    class Lost(Exception):
        pass

    async def swallow(ctx: Any, call_next: Any) -> Any:
        try:
            return await call_next()
        except Lost:
            return "swallowed"

    async def final() -> str:
        raise Lost("fence refused")

    with pytest.raises(Lost, match="fence refused"):
        await run_guarded([swallow], None, final)


def test_check_middleware_names_the_bad_entry() -> None:
    """A non-callable entry is a ConfigError naming its index."""

    async def ok(ctx: Any, call_next: Any) -> Any:
        return await call_next()

    assert check_middleware([ok]) == (ok,)
    assert check_middleware(None) == ()
    with pytest.raises(ConfigError) as info:
        check_middleware([ok, "not callable"])  # type: ignore[list-item]
    assert info.value.field == "middleware[1]"
    with pytest.raises(ConfigError, match="list of callables"):
        check_middleware(ok)  # type: ignore[arg-type]


# -- the optional hooks: protocols, not names found by getattr --------------------------------


def test_hooks_are_told_apart_by_their_protocols() -> None:
    """Metrics is a RoleObserver, Tracing a LeadershipObserver; a plain async function
    is a Middleware and neither; attach is called on the observers alone."""
    from whizorch.observe import Metrics, Tracing

    async def plain(ctx: Any, call_next: Any) -> Any:
        return await call_next()

    assert isinstance(Metrics(CollectorRegistry()), RoleObserver)
    assert isinstance(Tracing(), LeadershipObserver)
    assert not isinstance(plain, RoleObserver) and not isinstance(plain, LeadershipObserver)
    attached: list[object] = []

    class Attaching:
        async def __call__(self, ctx: Any, call_next: Any) -> Any:
            return await call_next()

        def attach(self, owner: Any) -> None:
            attached.append(owner)

    owner = object()
    attach_middleware([plain, Attaching()], owner)  # type: ignore[arg-type]
    assert attached == [owner]


def test_a_hook_that_is_not_a_method_is_refused_up_front() -> None:
    """A middleware whose ``attach``/``leadership_changed`` is not callable is a
    ConfigError naming it, when the role is built."""

    class NotAHook:
        leadership_changed = "nope"

        async def __call__(self, ctx: Any, call_next: Any) -> Any:
            return await call_next()

    with pytest.raises(ConfigError) as info:
        check_middleware([NotAHook()])
    assert info.value.field == "middleware[0].leadership_changed"


def test_leadership_observers_are_told_and_one_failing_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Every LeadershipObserver hears of a change; one that raises is logged and the
    next is still told."""
    heard: list[tuple[bool, int, str]] = []

    class Broken:
        async def __call__(self, ctx: Any, call_next: Any) -> Any:
            return await call_next()

        def leadership_changed(self, leading: bool, term: int, node: str) -> None:
            raise RuntimeError("observer bug")

    class Listening(Broken):
        def leadership_changed(self, leading: bool, term: int, node: str) -> None:
            heard.append((leading, term, node))

    with caplog.at_level(logging.ERROR, logger="whizorch.saga.middleware"):
        leadership_changed([Broken(), Listening()], True, 7, "n1")
    assert heard == [(True, 7, "n1")]
    assert "leadership_changed hook failed" in caplog.text
