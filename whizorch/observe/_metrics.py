"""Prometheus metrics, as a middleware: ``Worker(..., middleware=[Metrics()])``.

One ``Metrics()`` can serve every role in a process: passed to an Orchestrator,
a Worker or a SagaClient it counts what that role sees, and it times every etcd call
of the roles it is attached to. Metric names follow Prometheus conventions:

=============================================  =========  ==================================
name                                           type       labels
=============================================  =========  ==================================
``whizorch_saga_duration_seconds``             histogram  saga_type, region, outcome
``whizorch_sagas_total``                       counter    saga_type, outcome
``whizorch_saga_submissions_total``            counter    saga_type
``whizorch_failovers_total``                   counter    from_region, to_region, reason
``whizorch_step_attempts_total``               counter    saga_type, step, region, kind, outcome
``whizorch_step_duration_seconds``             histogram  saga_type, step, region, kind
``whizorch_consensus_operation_duration_seconds`` histogram operation
``whizorch_consensus_operation_errors_total``  counter    operation
``whizorch_is_leader``                         gauge      (none)
``whizorch_leader_term``                       gauge      shard
``whizorch_shards_led``                        gauge      (none)
``whizorch_sagas_in_flight``                   gauge      status
``whizorch_steps_waiting``                     gauge      waiting_for
``whizorch_region_preference_unmet_total``     counter    saga_type, wanted
``whizorch_worker_running_steps``              gauge      region
=============================================  =========  ==================================

A step *waits* when no healthy, compliant region can take it (``waiting_for="region"``)
or no live worker has the saga's definition at its pinned version (``"worker"``, e.g.
during a rolling deploy); a step that prefers a region (``region=``) and runs elsewhere
counts in ``whizorch_region_preference_unmet_total`` (the reason is in its history).
Saga outcomes are ``completed``, ``compensated`` and ``failed`` (counted once, by the
leader that finishes the saga); ``region`` of a saga is the region of its first step.
Step outcomes are ``ok``, ``error``, ``timeout``, ``cancelled``; kinds ``run`` and
``compensate``. ``operation`` is the etcd method (``Range``, ``Txn``, ``Put``,
``LeaseGrant``, ``LeaseKeepAlive`` ...). Label values are bounded: names the
deployment uses pass through, and past ``max_label_values`` distinct values per label
the rest are reported as ``other``.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from whizorch._check import is_int
from whizorch.errors import ConfigError
from whizorch.etcd import CallTiming, EtcdClient
from whizorch.saga import (
    CallNext,
    MiddlewareContext,
    Orchestrator,
    SagaEvent,
    SagaRecord,
    StepContext,
    Worker,
)

__all__ = ["Metrics"]

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
_OUTCOMES = {"completed", "compensated", "failed"}


class _Collectors:
    """The metric objects of one registry (registered once, shared by every Metrics on it)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.saga_duration = prometheus_client.Histogram(
            "whizorch_saga_duration_seconds", "Saga duration from adoption to its final state.",
            ["saga_type", "region", "outcome"], buckets=_SLOW, registry=r,
        )
        self.sagas = prometheus_client.Counter(
            "whizorch_sagas", "Sagas that reached a final state.", ["saga_type", "outcome"], registry=r
        )
        self.submissions = prometheus_client.Counter(
            "whizorch_saga_submissions", "Sagas submitted through a SagaClient.", ["saga_type"], registry=r
        )
        self.failovers = prometheus_client.Counter(
            "whizorch_failovers", "Steps moved to another region.", ["from_region", "to_region", "reason"], registry=r
        )
        self.step_attempts = prometheus_client.Counter(
            "whizorch_step_attempts", "Step handler runs (compensations included).",
            ["saga_type", "step", "region", "kind", "outcome"], registry=r,
        )
        self.step_duration = prometheus_client.Histogram(
            "whizorch_step_duration_seconds", "Step handler run time.",
            ["saga_type", "step", "region", "kind"], buckets=_SLOW, registry=r,
        )
        self.consensus = prometheus_client.Histogram(
            "whizorch_consensus_operation_duration_seconds", "etcd call round trip (retries included).",
            ["operation"], buckets=_FAST, registry=r,
        )
        self.unmet = prometheus_client.Counter(
            "whizorch_region_preference_unmet", "Steps that ran outside the region they prefer (region=).",
            ["saga_type", "wanted"], registry=r,
        )
        self.consensus_errors = prometheus_client.Counter(
            "whizorch_consensus_operation_errors", "etcd calls that failed.", ["operation"], registry=r
        )
        self.state = _StateCollector()
        r.register(self.state)


class _StateCollector(Collector):
    """Gauges read at scrape time from the attached orchestrators and workers."""

    def __init__(self) -> None:
        self.orchestrators: weakref.WeakSet[Orchestrator] = weakref.WeakSet()
        self.workers: weakref.WeakSet[Worker] = weakref.WeakSet()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        orchs = list(self.orchestrators)
        leading = [o for o in orchs if o.is_leader]
        yield GaugeMetricFamily(
            "whizorch_is_leader", "1 while an orchestrator in this process leads a shard.", value=1 if leading else 0
        )
        terms = GaugeMetricFamily(
            "whizorch_leader_term", "Term (fencing token) of each shard led here.", labels=["shard"]
        )
        led = {k: t for o in leading for k, t in o.shards.items()}
        for shard, term in sorted(led.items()):
            terms.add_metric([str(shard)], term)
        yield terms
        yield GaugeMetricFamily("whizorch_shards_led", "Shards the orchestrators in this process lead.", value=len(led))
        in_flight = GaugeMetricFamily("whizorch_sagas_in_flight", "Sagas the leader drives, by status.", labels=["status"])
        counts: dict[str, int] = {"running": 0, "compensating": 0}
        for o in leading:
            for status, n in o.in_flight().items():
                counts[status] = counts.get(status, 0) + n
        for status, n in sorted(counts.items()):
            in_flight.add_metric([status], n)
        yield in_flight
        waiting = GaugeMetricFamily(
            "whizorch_steps_waiting", "Steps that cannot be dispatched now, by what they wait for.", labels=["waiting_for"]
        )
        per_cause: dict[str, int] = {"region": 0, "worker": 0}
        for o in leading:
            for cause, n in o.waiting().items():
                per_cause[cause] = per_cause.get(cause, 0) + n
        for cause, n in sorted(per_cause.items()):
            waiting.add_metric([cause], n)
        yield waiting
        quarantined = CounterMetricFamily(
            "whizorch_quarantined", "Keys under the namespace the leader could not parse and skipped, by kind.",
            labels=["kind"],
        )
        per_kind: dict[str, int] = {}
        for o in orchs:
            for kind, n in o.quarantined.items():
                per_kind[kind] = per_kind.get(kind, 0) + n
        for kind, n in sorted(per_kind.items()):
            quarantined.add_metric([kind], n)
        yield quarantined
        running = GaugeMetricFamily("whizorch_worker_running_steps", "Step handlers running now.", labels=["region"])
        per_region: dict[str, int] = {}
        for w in list(self.workers):
            per_region[w.region] = per_region.get(w.region, 0) + w.running
        for region, n in sorted(per_region.items()):
            running.add_metric([region], n)
        yield running


_registries: dict[int, tuple[CollectorRegistry, _Collectors]] = {}
_registries_lock = threading.Lock()


def _collectors(registry: CollectorRegistry) -> _Collectors:
    with _registries_lock:
        known = _registries.get(id(registry))
        if known is None or known[0] is not registry:
            known = (registry, _Collectors(registry))
            _registries[id(registry)] = known
        return known[1]


class _Bounded:
    """Caps the distinct values of each label (the rest become ``other``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def __call__(self, label: str, value: object) -> str:
        text = str(value) if value not in (None, "") else "none"
        with self._lock:
            seen = self._seen.setdefault(label, set())
            if text in seen:
                return text
            if len(seen) >= self.limit:
                return "other"
            seen.add(text)
            return text


class Metrics:
    """Prometheus metrics for whizorch roles; a middleware (see module docs).

    ``registry`` defaults to prometheus-client's global registry, so the metrics are
    served with the service's own; whizorch's ``/metrics`` endpoint is
    :func:`whizorch.observe.serve_metrics`.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, max_label_values: int = 100) -> None:
        if not is_int(max_label_values, minimum=1):
            raise ConfigError("max_label_values must be an int >= 1", field="max_label_values", value=max_label_values)
        self.registry = registry if registry is not None else prometheus_client.REGISTRY
        self._m = _collectors(self.registry)
        self._label = _Bounded(max_label_values)
        self._clients: weakref.WeakSet[EtcdClient] = weakref.WeakSet()
        self._step_cache: dict[tuple[str, str, str, bool], tuple[Any, dict[str, Any]]] = {}
        self._op_cache: dict[str, tuple[Any, Any]] = {}

    # -- hooks -------------------------------------------------------------------------

    def attach(self, owner: Orchestrator | Worker) -> None:
        """Called by an Orchestrator or Worker as it starts: time its etcd calls, read its state."""
        if isinstance(owner, Orchestrator):
            self._m.state.orchestrators.add(owner)
        else:
            self._m.state.workers.add(owner)
        self.observe_client(owner.client)

    def observe_client(self, client: EtcdClient | None) -> None:
        """Time every call of ``client`` (once per client, however often attached)."""
        if isinstance(client, EtcdClient) and client not in self._clients:
            self._clients.add(client)
            client.observers.append(self._on_call)

    def _on_call(self, call: CallTiming) -> None:
        children = self._op_cache.get(call.operation)
        if children is None:
            op = self._label("operation", call.operation)
            children = self._op_cache[call.operation] = (self._m.consensus.labels(op), self._m.consensus_errors.labels(op))
        children[0].observe(call.seconds)
        if not call.ok:
            children[1].inc()

    # -- the middleware ----------------------------------------------------------------

    async def __call__(self, ctx: MiddlewareContext, call_next: CallNext) -> object:
        if isinstance(ctx, StepContext):
            return await self._step(ctx, call_next)
        if isinstance(ctx, SagaEvent):
            after = await call_next()
            if isinstance(after, SagaRecord):
                self._saga_event(ctx, after)
            return after
        result = await call_next()
        self._m.submissions.labels(self._label("saga_type", ctx.saga)).inc()
        return result

    def _step_children(self, ctx: StepContext) -> tuple[Any, dict[str, Any]]:
        """The labelled duration histogram and attempt counters of one step (cached:
        label lookups are most of a metric update's cost)."""
        key = (ctx.saga, ctx.step, ctx.region, ctx.compensating)
        found = self._step_cache.get(key)
        if found is None:
            labels = (
                self._label("saga_type", ctx.saga), self._label("step", ctx.step), self._label("region", ctx.region),
                "compensate" if ctx.compensating else "run",
            )
            found = (
                self._m.step_duration.labels(*labels),
                {o: self._m.step_attempts.labels(*labels, o) for o in ("ok", "error", "timeout", "cancelled")},
            )
            if len(self._step_cache) < 10_000:  # bounded like the labels themselves
                self._step_cache[key] = found
        return found

    async def _step(self, ctx: StepContext, call_next: CallNext) -> object:
        duration, attempts = self._step_children(ctx)
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await call_next()
            outcome = "ok"
            return result
        except TimeoutError:
            outcome = "timeout"
            raise
        except BaseException as exc:
            outcome = "cancelled" if isinstance(exc, asyncio.CancelledError) else "error"
            raise
        finally:
            duration.observe(time.perf_counter() - started)
            attempts[outcome].inc()

    def _saga_event(self, ctx: SagaEvent, after: SagaRecord) -> None:
        before = ctx.before
        at = round(after.updated, 4)
        if before is None or round(before.updated, 4) != at:
            for h in after.history:  # entries of this transition carry its time
                if h.get("event") == "region_preference_unmet" and h.get("at") == at:
                    self._m.unmet.labels(self._label("saga_type", after.saga), self._label("region", h.get("wanted"))).inc()
        for fo in after.failovers[len(before.failovers) if before is not None else 0 :]:
            self._m.failovers.labels(
                self._label("region", fo.get("from")), self._label("region", fo.get("to")),
                self._label("reason", fo.get("reason")),
            ).inc()
        if after.is_final and (before is None or not before.is_final) and after.status in _OUTCOMES:
            saga_type = self._label("saga_type", after.saga)
            regions = after.regions
            region = self._label("region", regions[0] if regions else None)
            self._m.sagas.labels(saga_type, after.status).inc()
            if after.finished is not None:
                self._m.saga_duration.labels(saga_type, region, after.status).observe(max(0.0, after.finished - after.created))

