"""OpenTelemetry tracing, as a middleware: ``Tracing()`` (needs ``whizorch[otel]``).

One saga is one trace, across processes and regions:

- ``submit <SagaType>`` (client, kind PRODUCER), a child of whatever span is current
  where ``submit``/``execute`` is called; its W3C context travels in the submission.
- ``orchestrate <SagaType>`` (leader), a child of the submission's span. Its own
  context is written into the saga record (``record.trace``), so every step dispatched
  later carries it, whichever region runs the step. The span is open while this node
  leads and the saga runs; each transition adds a span event (``dispatched``,
  ``step_done``, ``failover``, ``compensating`` ...). It ends when the saga is final, or
  when the node loses leadership (``whizorch.leadership_lost = true``); the next leader
  opens a new ``orchestrate`` span (``whizorch.resumed = true``) in the same trace.
- ``step <SagaType>.<step>`` / ``compensate <SagaType>.<step>`` (worker, kind
  CONSUMER), children of the orchestrate span, with the exception recorded when the
  handler fails.

Attributes follow the spec's names: ``saga.id``, ``transaction.id``, ``region``,
``is.leader``, ``success``; plus ``saga.type``, ``step.name``, ``step.attempt``,
``whizorch.*``. Only the OpenTelemetry API is used: with no SDK configured the spans
are no-ops and cost next to nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from whizorch.errors import ConfigError
from whizorch.saga import (
    CallNext,
    MiddlewareContext,
    SagaEvent,
    SagaHandle,
    SagaRecord,
    StepContext,
    Submission,
)

try:
    from opentelemetry import trace as otel_trace
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - exercised only without the extra
    otel_trace = None  # type: ignore[assignment]

__all__ = ["Tracing"]

_SCALARS = (str, bool, int, float)


class Tracing:
    """Spans for submissions, sagas and steps (see the module docs).

    ``tracer_provider`` defaults to the global one (``opentelemetry.trace``);
    the trace context always travels in W3C ``traceparent``/``tracestate`` form.
    """

    def __init__(self, tracer_provider: Any = None) -> None:
        if otel_trace is None:
            raise ConfigError(
                "tracing needs the OpenTelemetry API: pip install 'whizorch[otel]'", field="tracing", value=True
            )
        from whizorch import __version__

        self._tracer = otel_trace.get_tracer("whizorch", __version__, tracer_provider=tracer_provider)
        self._propagator = TraceContextTextMapPropagator()
        self._spans: dict[tuple[str, int, str], Span] = {}
        """(leader node, term, saga id) -> the open orchestrate span (a term is one
        leadership of one shard)."""

    # -- hooks -------------------------------------------------------------------------

    def leadership_changed(self, leading: bool, term: int, node: str) -> None:
        """End the sagas' spans when ``node`` stops leading a shard (``term``; 0: every
        shard it led): the next leader resumes them."""
        if leading:
            return
        for key in [k for k in self._spans if k[0] == node and (term == 0 or k[1] == term)]:
            span = self._spans.pop(key)
            span.set_attribute("whizorch.leadership_lost", True)
            span.end()

    def _extract(self, carrier: Mapping[str, str]) -> Any:
        return self._propagator.extract(carrier=carrier)

    # -- the middleware ----------------------------------------------------------------

    async def __call__(self, ctx: MiddlewareContext, call_next: CallNext) -> object:
        if isinstance(ctx, StepContext):
            return await self._step(ctx, call_next)
        if isinstance(ctx, SagaEvent):
            return await self._saga_event(ctx, call_next)
        return await self._submit(ctx, call_next)

    async def _submit(self, ctx: Submission, call_next: CallNext) -> object:
        with self._tracer.start_as_current_span(
            f"submit {ctx.saga}", kind=SpanKind.PRODUCER, attributes={"saga.id": ctx.saga_id, "saga.type": ctx.saga}
        ) as span:
            self._propagator.inject(ctx.trace)
            handle = await call_next()
            if isinstance(handle, SagaHandle):
                span.set_attribute("transaction.id", handle.txid)
            return handle

    async def _saga_event(self, ctx: SagaEvent, call_next: CallNext) -> object:
        key = (ctx.node, ctx.term, ctx.saga_id)
        span = self._spans.get(key)
        if span is None:
            span = self._tracer.start_span(
                f"orchestrate {ctx.saga}",
                context=self._extract(ctx.trace),
                kind=SpanKind.INTERNAL,
                attributes={
                    "saga.id": ctx.saga_id,
                    "saga.type": ctx.saga,
                    "transaction.id": ctx.transaction_id,
                    "is.leader": True,
                    "whizorch.node": ctx.node,
                    "whizorch.term": ctx.term,
                    "whizorch.resumed": ctx.before is not None,
                },
            )
            if ctx.event == "adopt":
                # the record stores the orchestrate span's context: steps become its children
                ctx.trace.clear()
                self._propagator.inject(ctx.trace, context=otel_trace.set_span_in_context(span))
            self._spans[key] = span
        after = await call_next()
        if isinstance(after, SagaRecord):
            self._record_changes(span, ctx.before, after)
            if after.is_final:
                self._finish(span, after)
                self._spans.pop(key, None)
        return after

    def _record_changes(self, span: Span, before: SagaRecord | None, after: SagaRecord) -> None:
        seen = len(before.history) if before is not None else 0
        for entry in after.history[seen:]:
            attributes = {f"whizorch.{k}": v for k, v in entry.items() if k not in ("event", "at") and isinstance(v, _SCALARS)}
            span.add_event(str(entry.get("event", "transition")), attributes=attributes)
        if after.regions:
            span.set_attribute("region", after.regions[0])

    def _finish(self, span: Span, rec: SagaRecord) -> None:
        success = rec.status == "completed"
        span.set_attribute("success", success)
        span.set_attribute("whizorch.status", rec.status)
        span.set_attribute("whizorch.regions", rec.regions)
        span.set_attribute("whizorch.failovers", len(rec.failovers))
        if not success:
            span.set_status(Status(StatusCode.ERROR, rec.error or rec.status))
        span.end()

    async def _step(self, ctx: StepContext, call_next: CallNext) -> object:
        kind = "compensate" if ctx.compensating else "step"
        with self._tracer.start_as_current_span(
            f"{kind} {ctx.saga}.{ctx.step}",
            context=self._extract(ctx.trace),
            kind=SpanKind.CONSUMER,
            attributes={
                "saga.id": ctx.saga_id,
                "saga.type": ctx.saga,
                "transaction.id": ctx.transaction_id,
                "region": ctx.region,
                "is.leader": False,
                "step.name": ctx.step,
                "step.index": ctx.step_index,
                "step.attempt": ctx.attempt,
                "whizorch.compensating": ctx.compensating,
                "whizorch.worker": ctx.worker,
            },
        ) as span:
            try:
                result = await call_next()
            except BaseException:
                span.set_attribute("success", False)
                raise
            span.set_attribute("success", True)
            return result
