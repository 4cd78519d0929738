"""Tracing and metrics middleware on real etcd: one saga across 3 regions is one trace,
and the metrics a scrape of ``/metrics`` returns agree with what happened.

Orchestrators, workers and the SagaClient run in this event loop (never a mock);
spans go to the OpenTelemetry SDK's in-memory exporter, passed explicitly so no global
provider is touched, and trace context reaches the workers only through etcd (the
submission, the saga record, the task), as it would across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from whizorch import EtcdClient
from whizorch.observe import Metrics, Tracing, serve_metrics
from whizorch.saga import App, Orchestrator, Retry, Router, Saga, SagaClient, StepContext, Worker
from whizorch.saga._shards import shard_of
from whizorch.testing import eventually_async

pytestmark = pytest.mark.etcd34

TTL = 2
LATENCY = {"eu": {"us": 80, "ap": 200}, "us": {"eu": 80, "ap": 150}, "ap": {"eu": 200, "us": 150}}

tour = Saga("tour")
HOLD: dict[str, asyncio.Event] = {}
"""saga id -> gate the ``us`` step waits on (same event loop as the test)."""


@tour.step(region="eu", retry=Retry(attempts=1))
async def book_eu(ctx: StepContext, inp: dict[str, Any]) -> dict[str, str]:
    return {"eu": ctx.region}


@book_eu.compensate
async def cancel_eu(ctx: StepContext, inp: dict[str, Any]) -> None:
    return None


@tour.step(region="us", retry=Retry(attempts=3, backoff_s=0.05))
async def book_us(ctx: StepContext, inp: dict[str, Any]) -> dict[str, str]:
    gate = HOLD.get(ctx.saga_id)
    if gate is not None:
        await gate.wait()
    return {"us": ctx.region}


@book_us.compensate
async def cancel_us(ctx: StepContext, inp: dict[str, Any]) -> None:
    return None


@tour.step(region="ap", retry=Retry(attempts=1))
async def book_ap(ctx: StepContext, inp: dict[str, Any]) -> dict[str, str]:
    if inp.get("fail"):
        raise ValueError("no seats left in ap")
    return {"ap": ctx.region}


app = App([tour])


class Observed:
    """Roles in one namespace, every one with the same tracing + metrics middleware."""

    def __init__(self, client: EtcdClient, ns: str, stack: contextlib.AsyncExitStack) -> None:
        self.client = client
        self.ns = ns
        self.stack = stack
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.registry = CollectorRegistry()
        self.middleware = [Tracing(self.provider), Metrics(self.registry)]
        self.sagas = SagaClient(client, namespace=ns, middleware=self.middleware)
        self.workers: dict[str, Worker] = {}

    async def orchestrator(self) -> Orchestrator:
        orch = Orchestrator(
            self.client, app, namespace=self.ns, lease_ttl_s=TTL, router=Router(latency_ms=LATENCY),
            middleware=self.middleware,
        )
        return await self.stack.enter_async_context(orch)

    async def worker(self, region: str) -> Worker:
        w = Worker(
            self.client, app, region=region, namespace=self.ns, lease_ttl_s=TTL, drain_timeout_s=1.0,
            middleware=self.middleware,
        )
        self.workers[region] = await self.stack.enter_async_context(w)
        return w

    async def start(self, regions: tuple[str, ...] = ("eu", "us", "ap")) -> Orchestrator:
        for region in regions:
            await self.worker(region)
        orch = await self.orchestrator()
        await orch.wait_leader(10)
        return orch

    def spans(self, saga_id: str) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if (s.attributes or {}).get("saga.id") == saga_id]


@pytest.fixture
async def observed(etcd_endpoints: list[str]) -> AsyncIterator[Observed]:
    ns = f"obs-{uuid.uuid4().hex[:8]}"
    async with EtcdClient(etcd_endpoints, timeout_s=3.0, retry_deadline_s=5.0) as client:
        async with contextlib.AsyncExitStack() as stack:
            obs = Observed(client, ns, stack)
            stack.push_async_callback(obs.sagas.aclose)
            try:
                yield obs
            finally:
                for gate in HOLD.values():
                    gate.set()
                HOLD.clear()
        await client.delete(ns + "/", prefix=True)


async def test_one_saga_across_three_regions_is_one_trace(observed: Observed) -> None:
    """submit, orchestrate and the 3 regional step spans share the caller's trace; steps are children of orchestrate."""
    orch = await observed.start()
    tracer = observed.provider.get_tracer("test")
    with tracer.start_as_current_span("checkout") as root:
        result = await observed.sagas.execute(tour, {}, saga_id="trip-1", timeout_s=30)
    assert result.ok and result.regions == ["eu", "us", "ap"]

    def all_finished() -> None:
        assert {s.name for s in observed.spans("trip-1")} >= {
            "submit tour", "orchestrate tour", "step tour.book_eu", "step tour.book_us", "step tour.book_ap"
        }

    await eventually_async(all_finished, timeout=10)
    spans = observed.spans("trip-1")
    trace_id = root.get_span_context().trace_id
    assert {s.context.trace_id for s in spans} == {trace_id}, "one trace per saga"
    by_name = {s.name: s for s in spans}
    orchestrate, submit = by_name["orchestrate tour"], by_name["submit tour"]
    assert orchestrate.parent is not None and orchestrate.parent.span_id == submit.context.span_id
    steps = [s for s in spans if s.name.startswith("step ")]
    assert sorted((s.attributes or {})["region"] for s in steps) == ["ap", "eu", "us"]
    for s in steps:
        attrs = s.attributes or {}
        assert s.parent is not None and s.parent.span_id == orchestrate.context.span_id
        assert attrs["transaction.id"] == result.txid and attrs["success"] is True and attrs["is.leader"] is False
    attrs = orchestrate.attributes or {}
    # the term of the leader of the saga's shard
    assert attrs["is.leader"] is True and attrs["success"] is True
    assert attrs["whizorch.term"] == orch.shards[shard_of("trip-1", orch.shard_count)]
    assert [e.name for e in orchestrate.events].count("step_done") == 3
    record = await observed.sagas.get("trip-1")
    assert record is not None and f"{orchestrate.context.span_id:016x}" in record.trace["traceparent"]


async def test_compensated_saga_records_the_exception_and_the_compensations(observed: Observed) -> None:
    """A failing step's span holds the exception; compensations are spans in the same trace; the saga span is an error."""
    await observed.start()
    result = await observed.sagas.execute(tour, {"fail": True}, saga_id="trip-2", timeout_s=30, raise_on_failure=False)
    assert result.status == "compensated"

    def finished() -> None:
        assert "orchestrate tour" in {s.name for s in observed.spans("trip-2")}

    await eventually_async(finished, timeout=10)
    spans = observed.spans("trip-2")
    assert len({s.context.trace_id for s in spans}) == 1
    names = [s.name for s in spans]
    assert "compensate tour.book_us" in names and "compensate tour.book_eu" in names
    (failed,) = [s for s in spans if s.name == "step tour.book_ap"]
    assert failed.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" and "no seats left in ap" in str(e.attributes) for e in failed.events)
    (orchestrate,) = [s for s in spans if s.name == "orchestrate tour"]
    assert (orchestrate.attributes or {})["success"] is False
    assert orchestrate.status.status_code is StatusCode.ERROR


async def test_leader_change_mid_saga_keeps_one_trace(observed: Observed) -> None:
    """The old leader's saga span ends as leadership_lost; the new leader's resumed span joins the same trace."""
    first = await observed.start()
    HOLD["trip-3"] = asyncio.Event()
    handle = await observed.sagas.submit(tour, {}, saga_id="trip-3")

    async def us_running() -> None:
        assert observed.workers["us"].running == 1

    # adopted and driven by the only orchestrator; the second joins only then (it could
    # otherwise be given trip-3's shard before the saga starts, and lead it from the start)
    await eventually_async(us_running, timeout=30)
    second = await observed.orchestrator()
    await first.aclose()  # resigns: the other candidate takes over at once
    shard = shard_of("trip-3", first.shard_count)

    def second_leads_trip3() -> None:
        assert shard in second.shards

    await eventually_async(second_leads_trip3, timeout=30)
    HOLD["trip-3"].set()
    result = await handle.result(timeout_s=30)
    assert result.ok

    def resumed_finished() -> None:
        assert [s.name for s in observed.spans("trip-3")].count("orchestrate tour") == 2

    await eventually_async(resumed_finished, timeout=30)
    spans = observed.spans("trip-3")
    assert len({s.context.trace_id for s in spans}) == 1
    lost, resumed = sorted((s for s in spans if s.name == "orchestrate tour"), key=lambda s: s.start_time or 0)
    assert (lost.attributes or {})["whizorch.leadership_lost"] is True
    assert (resumed.attributes or {})["whizorch.resumed"] is True
    assert (resumed.attributes or {})["whizorch.term"] == second.shards[shard]
    assert resumed.parent is not None and resumed.parent.span_id == lost.context.span_id
    # steps hang under the first orchestrate span, whose context the record keeps
    assert all(s.parent is not None and s.parent.span_id == lost.context.span_id for s in spans if s.name.startswith("step "))


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_scraped_over_http_agree_with_what_happened(observed: Observed) -> None:
    """/metrics shows sagas by outcome, step attempts per region, a failover, etcd call timings and leadership."""
    orch = await observed.start()
    with serve_metrics("127.0.0.1:0", observed.registry) as server:
        ok = await observed.sagas.execute(tour, {}, saga_id="m-ok", timeout_s=30)
        bad = await observed.sagas.execute(tour, {"fail": True}, saga_id="m-bad", timeout_s=30, raise_on_failure=False)
        assert (ok.status, bad.status) == ("completed", "compensated")
        # a region dies under a running step: it fails over
        HOLD["m-fo"] = asyncio.Event()
        handle = await observed.sagas.submit(tour, {}, saga_id="m-fo")

        async def us_running() -> None:
            assert observed.workers["us"].running == 1

        await eventually_async(us_running, timeout=15)
        await observed.workers["us"].aclose(drain=False)
        HOLD["m-fo"].set()  # the step's next run, in another region, goes through
        moved = await handle.result(timeout_s=30)
        assert moved.failed_over and moved.regions[:2] == ["eu", "us"]

        samples = await asyncio.to_thread(scrape, server.url)
    assert sample(samples, "whizorch_sagas_total", saga_type="tour", outcome="completed") == 2
    assert sample(samples, "whizorch_sagas_total", saga_type="tour", outcome="compensated") == 1
    assert sample(samples, "whizorch_saga_submissions_total", saga_type="tour") == 3
    assert sample(samples, "whizorch_saga_duration_seconds_count", saga_type="tour", region="eu", outcome="completed") == 2
    ((source, target),) = [(f["from"], f["to"]) for f in moved.failovers]
    assert (source, target) == ("us", "eu"), "closest healthy region by the latency matrix"
    assert sample(samples, "whizorch_failovers_total", from_region="us", to_region="eu", reason="region down") == 1
    for region, step in (("eu", "book_eu"), ("ap", "book_ap")):
        assert sample(samples, "whizorch_step_attempts_total", saga_type="tour", step=step, region=region, kind="run", outcome="ok") >= 2
    assert sample(samples, "whizorch_step_attempts_total", saga_type="tour", step="book_ap", region="ap", kind="run", outcome="error") == 1
    assert sample(samples, "whizorch_step_attempts_total", saga_type="tour", step="book_us", region="us", kind="run", outcome="cancelled") == 1
    assert sample(samples, "whizorch_consensus_operation_duration_seconds_count", operation="Txn") > 10
    assert sample(samples, "whizorch_consensus_operation_duration_seconds_count", operation="LeaseKeepAlive") >= 0
    assert sample(samples, "whizorch_is_leader") == 1
    for shard, term in orch.shards.items():  # one orchestrator: it leads every shard
        assert sample(samples, "whizorch_leader_term", shard=str(shard)) == term
    assert sample(samples, "whizorch_shards_led") == orch.shard_count == len(orch.shards)
    assert ("whizorch_sagas_in_flight", (("status", "running"),)) in samples
