"""Middleware overhead: what Metrics and Tracing add to one step call and one saga event.

In-process, no etcd: the pipelines the Worker and the Orchestrator run, around a no-op
handler / transition, timed per call (CPU of this process). Three set-ups, measured in
one run, so the ratios are comparable on a noisy machine:

* none: the bare call (``run_pipeline`` with no middleware is a plain await);
* metrics + tracing with no OpenTelemetry SDK (the API's no-op spans): what the CLI's
  ``--tracing --metrics-bind`` costs when no exporter is configured;
* metrics + tracing with the SDK and an in-memory exporter (spans really recorded).

Target (ours): the spec's saga budget is a 25 ms p99 per 3-step saga
(docs/performance.md); built-in middleware should add at most 1% of it, 250 us per
saga (3 step calls + 7 saga events). Printed as a ratio to that allowance.

    python bench/bench_middleware.py [--n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from whizorch.observe import Metrics, Tracing
from whizorch.saga import SagaEvent, SagaRecord, StepContext, StepState
from whizorch.saga._middleware import run_guarded, run_pipeline


def step_ctx(i: int, trace: dict[str, str]) -> StepContext:
    return StepContext(
        saga_id=f"s{i}", transaction_id=i, saga="order", step="charge", step_index=1, attempt=1, region="eu",
        compensating=False, idempotency_key=f"s{i}:charge", outputs={}, worker="w", trace=trace,
    )


def records(i: int) -> tuple[SagaRecord, SagaRecord]:
    before = SagaRecord(
        id=f"s{i}", saga="order", txid=i, status="running", steps=[StepState(name="charge", regions=["eu"])],
        created=0.0, updated=0.0,
    )
    after = before.clone()
    after.status, after.finished = "completed", 0.01
    after.note(0.01, "step_done", step=0)
    after.note(0.01, "completed")
    return before, after


async def measure(middleware: list[Any], n: int) -> tuple[float, float]:
    """Median microseconds per (step call, saga event) over n calls each."""

    async def handler() -> int:
        return 1

    step_us: list[float] = []
    event_us: list[float] = []
    carrier: dict[str, str] = {}
    for i in range(n):
        ctx = step_ctx(i, carrier)
        t0 = time.perf_counter()
        await run_pipeline(middleware, ctx, handler)
        step_us.append((time.perf_counter() - t0) * 1e6)

        # alternately an adoption (a new saga span) and the final result (it ends)
        before, after = records(i // 2)
        adopting = i % 2 == 0
        ev = SagaEvent(
            saga_id=before.id, saga="order", transaction_id=i, event="adopt" if adopting else "result",
            detail=None, before=None if adopting else before, node="n", term=1, trace={},
        )
        outcome = before if adopting else after

        async def transition(outcome: SagaRecord = outcome) -> SagaRecord:
            return outcome

        t0 = time.perf_counter()
        await run_guarded(middleware, ev, transition)
        event_us.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(step_us), statistics.median(event_us)


async def run(n: int) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    setups = {
        "none": [],
        "metrics + tracing (no SDK)": [Tracing(), Metrics(CollectorRegistry())],
        "metrics + tracing (SDK, in-memory)": [Tracing(provider), Metrics(CollectorRegistry())],
    }
    await measure([], 500)  # warm-up
    results = {name: await measure(mw, n) for name, mw in setups.items()}
    base_step, base_event = results["none"]
    print(f"{'set-up':<38} {'step call us':>13} {'saga event us':>14} {'added per 3-step saga us':>25}")
    for name, (step, event) in results.items():
        # a 3-step saga: 3 step calls and 7 saga events (adopt, 3 results, 3 claim releases)
        added = 3 * (step - base_step) + 7 * (event - base_event)
        verdict = "" if name == "none" else f"  = {added / 250:.2f}x the 250 us allowance"
        print(f"{name:<38} {step:>13.1f} {event:>14.1f} {added:>25.1f}{verdict}")
    print(f"spans recorded by the SDK run: {len(exporter.get_finished_spans())}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args(argv)
    asyncio.run(run(args.n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
