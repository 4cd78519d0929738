"""Middleware: ``async def mw(ctx, call_next)`` around the three places work happens.

=================  ===================  ==============================================
where              ``ctx``              ``await call_next()`` does and returns
=================  ===================  ==============================================
``SagaClient``     :class:`Submission`  writes the submission; the :class:`SagaHandle`
``Orchestrator``   :class:`SagaEvent`   applies one event to one saga and commits it
                                        (fenced); the record after (``None``: no change)
``Worker``         :class:`StepContext` runs the step handler (or compensation); its output
=================  ===================  ==============================================

Pass the same list to all three (``middleware=[Tracing(), Metrics(), my_mw]``); a
middleware that only cares about steps checks ``isinstance(ctx, StepContext)`` and
otherwise returns ``await call_next()``. The first in the list is the outermost.

Rules that keep the engine safe from its observers:

- ``call_next`` runs at most once (a second call raises ``RuntimeError``).
- Step middleware runs inside the step's timeout, and an exception it raises is the
  step's failure (judged by the step's ``Retry`` like a handler's).
- Saga-event middleware cannot lose a transition: if it raises (or returns) without
  calling ``call_next`` the event is applied anyway, and whatever it raises afterwards is
  logged, not propagated; an error of the transition itself always propagates
  unchanged, whatever the middleware did with it.

A middleware is anything that satisfies the :class:`Middleware` protocol (a plain
``async def`` does). A middleware object may also implement :class:`RoleObserver`
(``attach(owner)``, called once when the Orchestrator or Worker starts, with that
object) and :class:`LeadershipObserver` (``leadership_changed(leading, term, node)``,
called by the Orchestrator whenever it starts or stops leading); the built-in
``Metrics`` and ``Tracing`` in :mod:`whizorch.observe` do.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar, cast, runtime_checkable

import attrs

from whizorch.errors import ConfigError
from whizorch.saga._definition import StepContext
from whizorch.saga._machine import Event
from whizorch.saga._model import SagaRecord

if TYPE_CHECKING:
    from whizorch.saga._orchestrator import Orchestrator
    from whizorch.saga._worker import Worker

__all__ = [
    "CallNext",
    "LeadershipObserver",
    "Middleware",
    "MiddlewareContext",
    "RoleObserver",
    "SagaEvent",
    "Submission",
    "attach_middleware",
    "check_middleware",
    "leadership_changed",
    "run_guarded",
    "run_pipeline",
]

log = logging.getLogger("whizorch.saga.middleware")

T = TypeVar("T")
CallNext = Callable[[], Awaitable[object]]
"""Runs the rest of the pipeline once and returns its result: the :class:`SagaHandle`
(``Submission``), the record after (``SagaEvent``) or the handler's output
(``StepContext``)."""


@attrs.define(kw_only=True)
class Submission:
    """A saga about to be submitted (client side)."""

    saga_id: str
    saga: str
    input: object
    trace: dict[str, str]
    """W3C trace-context carrier stored with the submission; middleware may fill it."""


@attrs.define(kw_only=True)
class SagaEvent:
    """One event the leader is about to apply to one saga."""

    saga_id: str
    saga: str
    """The saga type (``"?"`` when the submission could not be decoded)."""
    transaction_id: int
    event: str
    """``adopt``, ``result``, ``claim_lost``, ``cancel``, ``regions``, ``timer``, ``fail``."""
    detail: Event | None
    """The state machine's event object (None for ``adopt`` and ``fail``)."""
    before: SagaRecord | None
    """The record before the event (None when adopting). Read-only."""
    node: str
    term: int
    """The leader's term (fencing token) applying the event: one leadership of one shard."""
    shard: int = 0
    """The shard the saga is in (see docs/design.md, "Shards")."""
    trace: dict[str, str]
    """W3C trace context of the saga. At ``adopt`` this is the carrier the new record
    will store (middleware may replace it); later, a copy of the record's."""


MiddlewareContext = Submission | SagaEvent | StepContext
"""What a middleware is called with, by the role calling it (see the module doc)."""


class Middleware(Protocol):
    """``async def mw(ctx, call_next)``: wraps the work ``ctx`` describes and returns
    what ``await call_next()`` returned (see the module doc for the rules)."""

    def __call__(self, ctx: MiddlewareContext, call_next: CallNext, /) -> Awaitable[object]: ...


@runtime_checkable
class RoleObserver(Protocol):
    """A middleware that wants the roles it runs in: ``attach`` is called once by each
    Orchestrator and Worker as it starts (to read its state, time its etcd calls)."""

    def attach(self, owner: Orchestrator | Worker) -> None: ...


@runtime_checkable
class LeadershipObserver(Protocol):
    """A middleware told whenever an Orchestrator starts (``leading``, with the term)
    or stops leading (term 0). It must be quick and not raise (an error is logged)."""

    def leadership_changed(self, leading: bool, term: int, node: str) -> None: ...


def check_middleware(middleware: Sequence[Middleware] | None) -> tuple[Middleware, ...]:
    """Validate a middleware list early, naming the bad entry."""
    if middleware is None:
        return ()
    if isinstance(middleware, (str, bytes)) or not isinstance(middleware, Sequence):
        raise ConfigError("middleware must be a list of callables", field="middleware", value=type(middleware).__name__)
    for i, mw in enumerate(middleware):
        if not callable(mw):
            raise ConfigError("each middleware must be callable as mw(ctx, call_next)", field=f"middleware[{i}]", value=mw)
        for hook in ("attach", "leadership_changed"):
            if hasattr(mw, hook) and not callable(getattr(mw, hook)):
                raise ConfigError(
                    f"a middleware's {hook} must be a method (see RoleObserver, LeadershipObserver)",
                    field=f"middleware[{i}].{hook}", value=getattr(mw, hook),
                )
    return tuple(middleware)


def attach_middleware(middleware: Sequence[Middleware], owner: Orchestrator | Worker) -> None:
    """Call ``attach(owner)`` on each middleware that is a :class:`RoleObserver` (an
    Orchestrator or a Worker starting)."""
    for mw in middleware:
        if isinstance(mw, RoleObserver):
            mw.attach(owner)


def leadership_changed(middleware: Sequence[Middleware], leading: bool, term: int, node: str) -> None:
    """Tell each middleware that is a :class:`LeadershipObserver`; an error one raises
    is logged (an observer's bug must not stop the leader)."""
    for mw in middleware:
        if isinstance(mw, LeadershipObserver):
            try:
                mw.leadership_changed(leading, term, node)
            except Exception:
                log.exception("middleware leadership_changed hook failed")


def _chain(
    middleware: Sequence[Middleware], ctx: MiddlewareContext, final: Callable[[], Awaitable[T]]
) -> Callable[[], Awaitable[T]]:
    async def call(index: int) -> object:
        if index == len(middleware):
            return await final()
        called = False

        async def call_next() -> object:
            nonlocal called
            if called:
                raise RuntimeError(f"middleware {middleware[index]!r} called call_next twice")
            called = True
            return await call(index + 1)

        return await middleware[index](ctx, call_next)

    async def start() -> T:
        # a middleware returns what call_next returned: final's T
        return cast(T, await call(0))

    return start


async def run_pipeline(middleware: Sequence[Middleware], ctx: MiddlewareContext, final: Callable[[], Awaitable[T]]) -> T:
    """Run ``final`` inside the middleware (errors of either propagate)."""
    if not middleware:
        return await final()
    return await _chain(middleware, ctx, final)()


async def run_guarded(middleware: Sequence[Middleware], ctx: SagaEvent, final: Callable[[], Awaitable[T]]) -> T:
    """Run ``final`` inside the middleware; ``final`` runs exactly once whatever they do.

    Its result is returned and its error raised, unchanged; a middleware's own
    error is logged.
    """
    if not middleware:
        return await final()
    ran = False
    outcome: list[T] = []
    error: list[BaseException] = []

    async def once() -> T:
        nonlocal ran
        ran = True
        try:
            value = await final()
        except BaseException as exc:
            error.append(exc)
            raise
        outcome.append(value)
        return value

    try:
        await _chain(middleware, ctx, once)()
    except Exception:
        if not error:
            log.exception("saga middleware failed (the transition is applied regardless)")
    if error:
        raise error[0]
    if not ran:
        return await once()
    return outcome[0]
