"""Metrics and Tracing middleware on hand-made contexts (the real-etcd end-to-end is in integration/)."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from whizorch.errors import ConfigError
from whizorch.observe import Metrics, Tracing, serve_metrics
from whizorch.observe._http import parse_bind
from whizorch.saga import SagaEvent, SagaRecord, StepContext, StepState, Submission


def record(status: str = "running", *, failovers: int = 0, regions: tuple[str, ...] = ("eu",)) -> SagaRecord:
    rec = SagaRecord(
        id="s1", saga="order", txid=42, status=status, steps=[StepState(name="a", regions=list(regions))],
        created=100.0, updated=100.0,
    )
    rec.failovers = [{"step": 0, "from": "eu", "to": "us", "reason": "region down"} for _ in range(failovers)]
    if status in ("completed", "compensated", "failed"):
        rec.finished = 102.5
    return rec


def event(before: SagaRecord | None, kind: str = "result", trace: dict[str, str] | None = None) -> SagaEvent:
    return SagaEvent(
        saga_id="s1", saga="order", transaction_id=42, event=kind, detail=None, before=before, node="n1", term=9,
        trace=trace if trace is not None else {},
    )


def step_ctx(*, region: str = "eu", step: str = "a", trace: dict[str, str] | None = None, compensating: bool = False) -> StepContext:
    return StepContext(
        saga_id="s1", transaction_id=42, saga="order", step=step, step_index=0, attempt=1, region=region,
        compensating=compensating, idempotency_key="s1:a", outputs={}, worker="w1", trace=trace or {},
    )


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    got = registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def returns(value: Any) -> Any:
    async def call_next() -> Any:
        return value

    return call_next


# -- metrics ---------------------------------------------------------------------------


async def test_final_transition_counts_the_saga_once_with_its_duration() -> None:
    """A saga reaching a final state is counted once per outcome, its duration observed."""
    reg = CollectorRegistry()
    m = Metrics(reg)
    running, done = record(), record("completed")
    assert await m(event(running), returns(done)) is done
    await m(event(done), returns(None))  # no change: not counted again
    assert value(reg, "whizorch_sagas_total", saga_type="order", outcome="completed") == 1
    assert value(reg, "whizorch_saga_duration_seconds_count", saga_type="order", region="eu", outcome="completed") == 1
    assert value(reg, "whizorch_saga_duration_seconds_sum", saga_type="order", region="eu", outcome="completed") == 2.5


async def test_new_failovers_are_counted_by_route_and_reason() -> None:
    """Only failovers added by this transition are counted."""
    reg = CollectorRegistry()
    m = Metrics(reg)
    await m(event(record(failovers=1)), returns(record(failovers=3)))
    assert value(reg, "whizorch_failovers_total", from_region="eu", to_region="us", reason="region down") == 2


async def test_step_attempts_by_outcome_and_kind() -> None:
    """Step runs are counted as ok, error or timeout, and timed; the error propagates."""
    reg = CollectorRegistry()
    m = Metrics(reg)
    assert await m(step_ctx(), returns("out")) == "out"

    async def fails() -> Any:
        raise ValueError("no")

    async def times_out() -> Any:
        raise TimeoutError

    with pytest.raises(ValueError):
        await m(step_ctx(compensating=True), fails)
    with pytest.raises(TimeoutError):
        await m(step_ctx(), times_out)
    base = {"saga_type": "order", "step": "a", "region": "eu"}
    assert value(reg, "whizorch_step_attempts_total", **base, kind="run", outcome="ok") == 1
    assert value(reg, "whizorch_step_attempts_total", **base, kind="compensate", outcome="error") == 1
    assert value(reg, "whizorch_step_attempts_total", **base, kind="run", outcome="timeout") == 1
    assert value(reg, "whizorch_step_duration_seconds_count", **base, kind="run") == 2


async def test_label_values_are_bounded() -> None:
    """Past max_label_values distinct values, a label reports 'other'."""
    reg = CollectorRegistry()
    m = Metrics(reg, max_label_values=2)
    for region in ("eu", "us", "ap", "sa"):
        await m(step_ctx(region=region), returns(None))
    regions = {
        s.labels["region"] for fam in reg.collect() if fam.name == "whizorch_step_attempts" for s in fam.samples
    }
    assert regions == {"eu", "us", "other"}


async def test_submissions_are_counted() -> None:
    """A Submission passing through counts per saga type."""
    reg = CollectorRegistry()
    m = Metrics(reg)
    await m(Submission(saga_id="s1", saga="order", input=None, trace={}), returns("handle"))
    assert value(reg, "whizorch_saga_submissions_total", saga_type="order") == 1


def test_two_metrics_on_one_registry_share_collectors() -> None:
    """Several Metrics objects on one registry do not clash (one set of collectors)."""
    reg = CollectorRegistry()
    Metrics(reg)
    Metrics(reg)
    assert value(reg, "whizorch_is_leader") == 0


def test_bad_max_label_values_names_the_field() -> None:
    """max_label_values must be a positive int."""
    with pytest.raises(ConfigError) as info:
        Metrics(CollectorRegistry(), max_label_values=0)
    assert info.value.field == "max_label_values"


def test_metrics_endpoint_serves_the_registry() -> None:
    """serve_metrics exposes the registry over HTTP at /metrics, and close() stops it."""
    reg = CollectorRegistry()
    Metrics(reg)
    with serve_metrics("127.0.0.1:0", reg) as server:
        body = urllib.request.urlopen(server.url, timeout=5).read().decode()
    assert "whizorch_is_leader 0.0" in body
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=2)


@pytest.mark.parametrize("bind", ["9464", "host:", ":80", "h:70000", "h:x", ""])
def test_bad_bind_address_names_the_field(bind: str) -> None:
    """A bind address that is not host:port is a ConfigError with the value."""
    with pytest.raises(ConfigError) as info:
        parse_bind(bind)
    assert info.value.field == "metrics_bind"
    assert parse_bind("[::1]:9464") == ("::1", 9464)


# -- tracing ---------------------------------------------------------------------------


@pytest.fixture
def spans() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


async def test_submit_adopt_and_step_share_one_trace(spans: tuple[Tracing, InMemorySpanExporter]) -> None:
    """submit -> orchestrate -> step spans form one trace through the carriers alone."""
    tracing, exporter = spans
    sub = Submission(saga_id="s1", saga="order", input=None, trace={})
    await tracing(sub, returns("handle"))
    assert "traceparent" in sub.trace
    adopt = event(None, "adopt", trace=dict(sub.trace))
    await tracing(adopt, returns(record()))
    assert adopt.trace["traceparent"] != sub.trace["traceparent"]  # now the orchestrate span's
    await tracing(step_ctx(trace=adopt.trace), returns("out"))
    await tracing(event(record(), trace=dict(adopt.trace)), returns(record("completed")))
    finished = {s.name: s for s in exporter.get_finished_spans()}
    assert set(finished) == {"submit order", "orchestrate order", "step order.a"}
    assert len({s.context.trace_id for s in finished.values()}) == 1
    orch, step, submit = finished["orchestrate order"], finished["step order.a"], finished["submit order"]
    assert orch.parent is not None and orch.parent.span_id == submit.context.span_id
    assert step.parent is not None and step.parent.span_id == orch.context.span_id
    assert step.kind is SpanKind.CONSUMER and step.attributes is not None
    assert (step.attributes["region"], step.attributes["saga.id"], step.attributes["success"]) == ("eu", "s1", True)
    assert orch.attributes is not None
    assert (orch.attributes["is.leader"], orch.attributes["transaction.id"], orch.attributes["success"]) == (True, 42, True)


async def test_failed_step_records_the_exception(spans: tuple[Tracing, InMemorySpanExporter]) -> None:
    """A handler's exception is recorded on the step span, which is marked failed."""
    tracing, exporter = spans

    async def fails() -> Any:
        raise ValueError("card declined")

    with pytest.raises(ValueError):
        await tracing(step_ctx(), fails)
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["success"] is False
    assert any(e.name == "exception" and "card declined" in str(e.attributes) for e in span.events)


async def test_leadership_loss_ends_open_saga_spans(spans: tuple[Tracing, InMemorySpanExporter]) -> None:
    """Stepping down ends the open orchestrate spans; the next leader's span is marked resumed."""
    tracing, exporter = spans
    await tracing(event(None, "adopt"), returns(record()))
    assert exporter.get_finished_spans() == ()
    tracing.leadership_changed(False, 0, "other-node")
    assert exporter.get_finished_spans() == ()  # another node stepping down ends nothing here
    tracing.leadership_changed(False, 0, "n1")
    (lost,) = exporter.get_finished_spans()
    assert lost.attributes is not None and lost.attributes["whizorch.leadership_lost"] is True
    await tracing(event(record(), trace={}), returns(record("compensated")))
    resumed = exporter.get_finished_spans()[-1]
    assert resumed.attributes is not None and resumed.attributes["whizorch.resumed"] is True
    assert resumed.status.status_code is StatusCode.ERROR


async def test_tracing_is_cheap_without_an_sdk() -> None:
    """With the API's default no-op provider the middleware passes results through."""
    tracing = Tracing()
    sub = Submission(saga_id="s1", saga="order", input=None, trace={})
    assert await tracing(sub, returns("h")) == "h"
    assert await tracing(step_ctx(), returns(1)) == 1
