"""Saga definitions in plain async Python: ordered steps, compensations, retry policies.

::

    transfer = Saga("transfer")

    @transfer.step(retry=Retry(attempts=3), timeout_s=10, region="eu")
    async def debit(ctx, cmd):
        ...

    @debit.compensate
    async def refund(ctx, cmd):
        ...

Handlers take ``(ctx, input)`` and return a JSON-serialisable output. Sync functions
run in a worker thread so they never block the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, overload

import attrs

from whizorch._check import is_int, is_number
from whizorch.coord import Fence
from whizorch.errors import ConfigError, FencedError
from whizorch.etcd import EtcdClient
from whizorch.saga._spec import RetryTiming, SagaSpec, StepSpec, fingerprint

__all__ = ["App", "Retry", "Saga", "Step", "StepContext"]

Handler = Callable[["StepContext", Any], Any]
H = TypeVar("H", bound=Callable[..., Any])
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")


def _check_name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ConfigError(
            f"{field} must be 1-100 characters of letters, digits, '_', '.', '-'", field=field, value=value
        )
    return value


def _check_timeout(value: Any, field: str) -> float | None:
    # NaN passes a plain "<= 0" test and would poison the timer heap; inf is spelt None
    if value is not None and (
        not is_number(value, above=0)
    ):
        raise ConfigError("timeout_s must be a positive number of seconds or None", field=field, value=value)
    return value


def _tags(value: Any) -> tuple[str, ...]:
    # a bare str would otherwise become the set of its letters: frozenset("gdpr")
    tags = () if isinstance(value, (str, bytes)) or not isinstance(value, Iterable) else tuple(value)
    if (not tags and value) or not all(isinstance(t, str) for t in tags):
        raise ConfigError("compliance must be a collection of tag strings", field="compliance", value=value)
    return tags


def _exception_classes(value: Any, field: str) -> tuple[type[BaseException], ...]:
    """A class or an iterable of classes -> tuple (isinstance() rejects lists at run time)."""
    items = (value,) if isinstance(value, type) else value
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        items = (None,)
    out = tuple(items)
    if not all(isinstance(c, type) and issubclass(c, BaseException) for c in out):
        raise ConfigError("expected an exception class or a tuple of them", field=field, value=value)
    return out


@attrs.frozen(kw_only=True)
class Retry:
    """How a step (or a compensation) is retried.

    ``attempts`` counts every run, the first included. Delays grow as
    ``backoff_s * multiplier**(attempt-1)``, capped at ``max_delay_s``, with full jitter
    when ``jitter`` is set. Only exceptions that are instances of ``retry_on`` and not
    of ``give_up_on`` are retried; the worker that catches one decides, and records
    the verdict with the result.
    """

    attempts: int = 3
    """Total runs, the first included (1 = no retry)."""
    backoff_s: float = 0.1
    """Delay before the second run."""
    multiplier: float = 2.0
    """Growth of the delay per further run."""
    max_delay_s: float = 10.0
    """Upper bound of one delay."""
    jitter: bool = True
    """Randomise each delay in [delay/2, delay]."""
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    """Exception classes worth retrying."""
    give_up_on: tuple[type[BaseException], ...] = ()
    """Exception classes never retried (checked first)."""

    def __attrs_post_init__(self) -> None:
        if not is_int(self.attempts, minimum=1):
            raise ConfigError("Retry.attempts must be an int >= 1", field="retry.attempts", value=self.attempts)
        for name in ("backoff_s", "max_delay_s"):
            v = getattr(self, name)
            if not is_number(v, minimum=0):
                raise ConfigError(f"Retry.{name} must be a finite number >= 0 seconds", field=f"retry.{name}", value=v)
        if not is_number(self.multiplier, minimum=1):
            raise ConfigError("Retry.multiplier must be a finite number >= 1", field="retry.multiplier", value=self.multiplier)
        for name in ("retry_on", "give_up_on"):
            # frozen: normalise in place once, so a list or a bare class works in retryable()
            object.__setattr__(self, name, _exception_classes(getattr(self, name), f"retry.{name}"))

    @property
    def timing(self) -> RetryTiming:
        """When runs are retried, as data (what the leader needs; no exception classes)."""
        return RetryTiming(
            attempts=self.attempts, backoff_s=self.backoff_s, multiplier=self.multiplier,
            max_delay_s=self.max_delay_s, jitter=self.jitter,
        )

    def delay_s(self, attempt: int) -> float:
        """Seconds to wait before run ``attempt + 1``."""
        return self.timing.delay_s(attempt)

    def retryable(self, exc: BaseException) -> bool:
        """True when ``exc`` may be retried under this policy."""
        return not isinstance(exc, self.give_up_on) and isinstance(exc, self.retry_on)



@attrs.frozen(kw_only=True)
class StepContext:
    """What a handler knows about the run it is part of."""

    saga_id: str
    """The saga's id (chosen by the submitter or generated)."""
    transaction_id: int
    """The global transaction id: an etcd revision, unique and monotonic."""
    saga: str
    """The saga type's name."""
    version: str = ""
    """The version of the saga's definition this saga is pinned to (see ``Saga``)."""
    step: str
    """This step's name."""
    step_index: int
    """This step's position (0-based)."""
    attempt: int
    """1 for the first run, 2 for the first retry ... A leader change re-offers a
    dispatched step under the same attempt, so two runs can share one: tell runs apart
    by ``fence_token``."""
    region: str
    """The region running this attempt."""
    compensating: bool
    """True when this call is the step's compensation."""
    idempotency_key: str
    """Stable per saga + step across attempts, regions and failovers: pass it to
    external systems so a repeated run has no repeated effect."""
    outputs: Mapping[str, Any]
    """Outputs of the steps completed before this one, by step name."""
    worker: str = ""
    """The worker running this attempt."""
    trace: Mapping[str, str] = attrs.Factory(dict)
    """The saga's W3C trace context (``traceparent``...), for spans that join its trace."""
    fence_token: int = 0
    """This run's fencing token: the create revision of its claim (the run's task, put on
    its worker's lease). Every later run of the
    same step (retry, re-dispatch, failover) gets a strictly larger token, so an
    external system that remembers the largest token it has seen per resource refuses
    a stale run's late write (``UPDATE ... WHERE fence < :token``)."""
    fence_key: bytes = b""
    """The claim's etcd key (the run's task): an etcd write compared on ``create_revision(fence_key) ==
    fence_token`` commits only while this run holds its claim (see ``fenced_txn``)."""
    deadline: float | None = None
    """Wall-clock time (``time.time()``) at which the step's timeout cancels this run;
    None when the step has no timeout."""
    _claim_left: Callable[[], float] = attrs.field(default=lambda: math.inf, repr=False, alias="claim_left")
    _etcd: EtcdClient | None = attrs.field(default=None, repr=False, alias="etcd")

    @property
    def etcd(self) -> EtcdClient:
        """The open etcd client of the worker running this step: for fenced writes
        (``fenced_txn(ctx.etcd, ctx, ...)``) and reads, with no client of your own."""
        if self._etcd is None:
            raise ConfigError(
                "this StepContext has no etcd client: a worker gives its own; pass etcd= when you build one by hand",
                field="etcd",
            )
        return self._etcd

    @property
    def fence(self) -> Fence:
        """This run's claim as a :class:`~whizorch.coord.Fence`: pass it to
        ``VersionedStore`` writes (``fence=ctx.fence``) or :func:`fenced_txn`."""
        return Fence(self.fence_key, self.fence_token)

    @property
    def remaining_s(self) -> float:
        """Seconds this run may still act: the sooner of its timeout and the moment its
        worker's lease may lapse (0 once the claim may be gone)."""
        left = self._claim_left()
        if self.deadline is not None:
            left = min(left, self.deadline - time.time())
        return max(0.0, left)

    def check(self) -> None:
        """Raise :class:`~whizorch.errors.FencedError` if this run may no longer hold its
        claim (its worker's session is lost, or the step timed out): call it before an
        effect that has no fence of its own."""
        if self._claim_left() <= 0:
            raise FencedError(
                "this run no longer holds its claim: its worker's session is lost",
                saga_id=self.saga_id, step=self.step, attempt=self.attempt, token=self.fence_token,
            )
        if self.deadline is not None and time.time() >= self.deadline:
            raise FencedError(
                "this run is past its step timeout",
                saga_id=self.saga_id, step=self.step, attempt=self.attempt, token=self.fence_token,
            )


class Step:
    """One step of a saga; use ``@step.compensate`` to give it a compensation."""

    def __init__(
        self,
        saga: Saga,
        fn: Handler,
        *,
        name: str,
        index: int,
        retry: Retry,
        timeout_s: float | None,
        region: str | None,
        compliance: frozenset[str],
        size_bytes: int,
    ) -> None:
        self.saga = saga
        self.fn = fn
        self.name = name
        self.index = index
        self.retry = retry
        self.timeout_s = timeout_s
        self.region = region
        self.compliance = compliance
        self.size_bytes = size_bytes
        self.compensation: Handler | None = None
        self.compensation_retry: Retry = Retry(attempts=5)
        self.compensation_timeout_s: float | None = timeout_s
        # name/doc/module only: merging fn.__dict__ (updated=) would let a decorated
        # function's attributes (tenacity sets fn.retry) overwrite this step's fields
        functools.update_wrapper(self, fn, updated=())

    @overload
    def compensate(self, fn: H, /) -> H: ...

    @overload
    def compensate(
        self, fn: None = None, /, *, retry: Retry | None = None, timeout_s: float | None = None
    ) -> Callable[[H], H]: ...

    def compensate(
        self,
        fn: Handler | None = None,
        /,
        *,
        retry: Retry | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """Register the compensation of this step (usable with or without arguments)."""
        _check_timeout(timeout_s, "compensate.timeout_s")
        if retry is not None and not isinstance(retry, Retry):
            raise ConfigError("retry must be a whizorch Retry", field="compensate.retry", value=type(retry).__name__)

        def register(f: Handler) -> Handler:
            if not callable(f):
                raise ConfigError("a compensation must be callable", field="compensate", value=f)
            if self.compensation is not None:
                raise ConfigError("this step already has a compensation", field="compensate", value=self.name)
            self.compensation = f
            self.saga._changed()
            if retry is not None:
                self.compensation_retry = retry
            if timeout_s is not None:
                self.compensation_timeout_s = timeout_s
            return f

        return register(fn) if fn is not None else register

    async def __call__(self, ctx: StepContext, value: Any) -> Any:
        """Run the step's handler (sync handlers in a thread)."""
        return await call_handler(self.fn, ctx, value)

    def spec(self, version: str) -> StepSpec:
        """This step as data (see ``_spec.py``)."""
        return StepSpec(
            saga=self.saga.name, version=version, name=self.name, index=self.index, retry=self.retry.timing,
            timeout_s=self.timeout_s, region=self.region, compliance=self.compliance, size_bytes=self.size_bytes,
            compensable=self.compensation is not None, compensation_retry=self.compensation_retry.timing,
            compensation_timeout_s=self.compensation_timeout_s,
            retry_on=_class_names(self.retry.retry_on), give_up_on=_class_names(self.retry.give_up_on),
        )

    def __repr__(self) -> str:
        return f"<Step {self.saga.name}.{self.name} #{self.index}>"


def _class_names(classes: tuple[type[BaseException], ...]) -> tuple[str, ...]:
    # without the module: a class must fingerprint alike whether its module runs as
    # __main__ or is imported by name (a worker's --app and a test script differ so)
    return tuple(c.__qualname__ for c in classes)


async def call_handler(fn: Handler, ctx: StepContext, value: Any) -> Any:
    """Await an async handler, or run a sync one in a thread."""
    if inspect.iscoroutinefunction(fn):
        return await fn(ctx, value)
    result = await asyncio.to_thread(fn, ctx, value)
    if inspect.isawaitable(result):
        return await result
    return result


class Saga:
    """A saga type: a name, a version and its ordered steps.

    ``version`` names this definition (letters, digits, '_', '.', '-'); by default it is
    a fingerprint of the steps and their options (``f`` + 10 hex digits), so changing a
    step's name, order or options makes a new version and changing a handler's body does
    not. Each saga is pinned to the version it started with (see docs/design.md).
    """

    def __init__(self, name: str, /, *, version: str | None = None, max_failovers: int = 3) -> None:
        self.name = _check_name(name, "saga name")
        if version is not None:
            _check_name(version, "saga version")
        if not is_int(max_failovers, minimum=0):
            raise ConfigError("max_failovers must be an int >= 0", field="max_failovers", value=max_failovers)
        self.max_failovers = max_failovers
        self.steps: list[Step] = []
        self._version = version
        self._spec: SagaSpec | None = None

    def _changed(self) -> None:
        self._spec = None

    @property
    def spec(self) -> SagaSpec:
        """This definition as data: what a leader needs to drive it (see ``_spec.py``)."""
        if self._spec is None:
            draft = SagaSpec(
                name=self.name, version="", max_failovers=self.max_failovers, steps=tuple(s.spec("") for s in self.steps)
            )
            version = self._version or fingerprint(draft)
            self._spec = SagaSpec(
                name=self.name, version=version, max_failovers=self.max_failovers,
                steps=tuple(s.spec(version) for s in self.steps),
            )
        return self._spec

    @property
    def version(self) -> str:
        """The version sagas started from this definition are pinned to."""
        return self.spec.version

    @overload
    def step(self, fn: Handler, /) -> Step: ...

    @overload
    def step(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        retry: Retry | None = None,
        timeout_s: float | None = 30.0,
        region: str | None = None,
        compliance: Iterable[str] = (),
        size_bytes: int = 0,
    ) -> Callable[[Handler], Step]: ...

    def step(
        self,
        fn: Handler | None = None,
        /,
        *,
        name: str | None = None,
        retry: Retry | None = None,
        timeout_s: float | None = 30.0,
        region: str | None = None,
        compliance: Iterable[str] = (),
        size_bytes: int = 0,
    ) -> Any:
        """Add a step (decorator, with or without arguments).

        ``region`` is the data's home region (routing prefers it), ``compliance`` the
        tags a region must have to run the step, ``size_bytes`` the data it moves.
        """
        _check_timeout(timeout_s, "timeout_s")
        if retry is not None and not isinstance(retry, Retry):
            raise ConfigError("retry must be a whizorch Retry", field="retry", value=type(retry).__name__)
        if region is not None:
            _check_name(region, "region")  # it becomes a key segment: task/<region>/...
        tags = _tags(compliance)
        if not is_int(size_bytes, minimum=0):
            raise ConfigError("size_bytes must be an int >= 0", field="size_bytes", value=size_bytes)

        def register(f: Handler) -> Step:
            if not callable(f):
                raise ConfigError("a step must be callable", field="step", value=f)
            step_name = _check_name(name or getattr(f, "__name__", ""), "step name")
            if any(s.name == step_name for s in self.steps):
                raise ConfigError(f"saga {self.name!r} already has a step {step_name!r}", field="step name", value=step_name)
            st = Step(
                self,
                f,
                name=step_name,
                index=len(self.steps),
                retry=retry or Retry(),
                timeout_s=timeout_s,
                region=region,
                compliance=frozenset(tags),
                size_bytes=size_bytes,
            )
            self.steps.append(st)
            self._changed()
            return st

        return register(fn) if fn is not None else register

    def __repr__(self) -> str:
        return f"<Saga {self.name} version={self.version} steps={[s.name for s in self.steps]}>"


class App:
    """The sagas a deployment knows; orchestrators and workers load an App.

    An App may hold several versions of a saga type (``App([order_v1, order_v2])``): the
    last one of a name is its *current* version, which new sagas start on; earlier ones
    are there to finish the sagas pinned to them during a rolling deploy.
    """

    def __init__(self, sagas: Iterable[Saga] = (), /) -> None:
        self.sagas: dict[str, Saga] = {}
        """The current version of each saga type, by name."""
        self._versions: dict[tuple[str, str], Saga] = {}
        for s in sagas:
            self.add(s)

    def add(self, saga: Saga) -> Saga:
        """Register a saga type, or another version of one (it becomes the current one)."""
        if not isinstance(saga, Saga):
            raise ConfigError("App.add takes a Saga", field="saga", value=type(saga).__name__)
        if not saga.steps:
            raise ConfigError(f"saga {saga.name!r} has no steps: add one with @{saga.name}.step", field="saga", value=saga.name)
        key = (saga.name, saga.version)
        known = self._versions.get(key)
        if known is not None and known is not saga:
            raise ConfigError(
                f"a saga named {saga.name!r} at version {saga.version!r} is already registered: "
                "give one of them another name, or another version (Saga(..., version=...))",
                field="saga", value=saga.name,
            )
        self._versions.pop(key, None)  # re-added: it becomes the current one again
        self._versions[key] = saga
        self.sagas[saga.name] = saga
        return saga

    def get(self, name: str, version: str | None = None) -> Saga | None:
        """The saga type called ``name`` at ``version`` (its current one when None), or None."""
        if version is None:
            return self.sagas.get(name)
        return self._versions.get((name, version))

    def versions(self, name: str) -> list[str]:
        """The versions of ``name`` this App holds, oldest first (the last is current)."""
        return [v for (n, v) in self._versions if n == name]

    def definitions(self) -> list[Saga]:
        """Every saga and version this App holds."""
        return list(self._versions.values())

    def served(self) -> dict[str, list[str]]:
        """What a worker with this App can run: saga type -> versions."""
        out: dict[str, list[str]] = {}
        for name, version in self._versions:
            out.setdefault(name, []).append(version)
        return out
