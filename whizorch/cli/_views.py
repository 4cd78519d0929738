"""Pure views for ``whizorch status`` and ``whizorch sagas``: aggregation and rows.

Nothing here talks to etcd: the commands in ``_inspect`` read a snapshot and hand it
over, so every function is testable with hand-built records; ``_inspect`` draws
them with rich.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from whizorch._format import fmt_duration, fmt_time
from whizorch.etcd import KeyValue
from whizorch.saga import (
    FINAL_STATUSES,
    STATUSES,
    Keys,
    SagaRecord,
    StepState,
    latency_doc,
    leader_summary,
    live_definitions,
    quarantine_notes,
    summarize_cluster,
    summarize_definitions,
    summarize_regions,
    summarize_shards,
    tasks_by_region,
    workers_by_region,
)

# the status reads moved to the saga layer (the console shares them); named here too
from whizorch.saga import Submitted as Pending

__all__ = [
    "Pending",
    "SagaDetails",
    "compensation_state",
    "count_sagas",
    "failover_rows",
    "fmt_duration",
    "fmt_route",
    "fmt_time",
    "latency_doc",
    "leader_summary",
    "list_rows",
    "no_compensation",
    "quarantine_notes",
    "record_document",
    "step_rows",
    "summarize_cluster",
    "summarize_definitions",
    "summarize_regions",
    "summarize_status",
    "tasks_by_region",
    "timeline_rows",
    "workers_by_region",
]

IN_FLIGHT = tuple(s for s in STATUSES if s not in FINAL_STATUSES)
FINAL = tuple(s for s in STATUSES if s in FINAL_STATUSES)



# -- formatting --------------------------------------------------------------------------


def fmt_route(regions: Sequence[str]) -> str:
    """A step's regions in order, repeats (retries in one region) collapsed: ``eu -> us``."""
    route: list[str] = []
    for r in regions:
        if not route or route[-1] != r:
            route.append(r)
    return " -> ".join(route) if route else "-"


def _span(start: float | None, end: float | None) -> float | None:
    return round(end - start, 4) if start is not None and end is not None else None


def _since(rec: SagaRecord, at: Any) -> float:
    """Seconds from the saga's creation (history times are rounded: never below 0)."""
    return round(max(0.0, float(at if at is not None else rec.created) - rec.created), 4)


# -- status ------------------------------------------------------------------------------


def count_sagas(records: Iterable[SagaRecord], pending: int = 0, *, total_records: int | None = None) -> dict[str, Any]:
    """Sagas in flight by status, totals by final status, submissions not yet adopted.

    ``records`` may be the first of ``total_records`` (a bounded read of a large
    namespace): then the statuses count those only, ``exact`` is False, ``scanned``
    says how many were read, and ``total`` is ``total_records + pending``.
    """
    in_flight = dict.fromkeys(IN_FLIGHT, 0)
    final = dict.fromkeys(FINAL, 0)
    scanned = 0
    for rec in records:
        scanned += 1
        if rec.status in in_flight:
            in_flight[rec.status] += 1
        elif rec.status in final:
            final[rec.status] += 1
    exact = total_records is None or total_records <= scanned
    total = pending + (scanned if exact or total_records is None else total_records)
    return {
        "pending": pending, "in_flight": in_flight, "final": final, "total": total, "exact": exact, "scanned": scanned,
    }  # fmt: skip


def summarize_status(
    *,
    namespace: str,
    revision: int,
    candidates: Sequence[KeyValue],
    workers: Mapping[str, Sequence[Mapping[str, Any]]],
    tasks: Mapping[str, int],
    records: Iterable[SagaRecord],
    pending: int,
    cluster: dict[str, Any],
    quarantined: Sequence[dict[str, Any]] = (),
    latency: dict[str, Any] | None = None,
    total_records: int | None = None,
    members: Sequence[KeyValue] | None = None,
    live: Sequence[KeyValue] | None = None,
    shard_count: int = 0,
    keys: Keys | None = None,
) -> dict[str, Any]:
    """The ``whizorch status --json`` document (shape in the command's help);
    ``total_records`` when ``records`` are only the first of them (see count_sagas);
    ``members`` (``orch/``), ``live`` (the in-flight index) and ``shard_count`` add the
    shards and orchestrators."""
    shards, orchestrators = (
        summarize_shards(candidates, members or [], live or [], keys or Keys(namespace), shard_count)
        if shard_count else ([], [])
    )
    return {
        "namespace": namespace,
        "revision": revision,
        "leader": leader_summary(candidates),
        "candidates": len(members) if members is not None else len(candidates),
        "shards": shards,
        "orchestrators": orchestrators,
        "regions": summarize_regions(workers, tasks),
        "sagas": count_sagas(records, pending, total_records=total_records),
        "definitions": summarize_definitions(records, workers, live_definitions(live) if live is not None else None),
        "quarantined": list(quarantined),
        "latency": latency,
        "etcd": cluster,
    }


# -- sagas list ----------------------------------------------------------------------------


def _row(rec: SagaRecord, now: float) -> dict[str, Any]:
    step = rec.steps[rec.step].name if 0 <= rec.step < len(rec.steps) else None
    return {
        "id": rec.id, "type": rec.saga, "status": rec.status, "txid": rec.txid, "step": step,
        "regions": rec.regions, "failovers": len(rec.failovers), "created": rec.created, "finished": rec.finished,
        "age_s": round(now - rec.created, 3), "duration_s": round((rec.finished or now) - rec.created, 3),
        "error": rec.error,
    }  # fmt: skip


def _pending_row(p: Pending, now: float) -> dict[str, Any]:
    return {
        "id": p.saga_id, "type": p.saga, "status": "pending", "txid": p.txid, "step": None, "regions": [],
        "failovers": 0, "created": p.submitted, "finished": None,
        "age_s": round(now - p.submitted, 3) if p.submitted is not None else None, "duration_s": None, "error": None,
    }  # fmt: skip


def list_rows(
    records: Iterable[SagaRecord],
    pending: Iterable[Pending] = (),
    *,
    now: float,
    status: str | None = None,
    saga_type: str | None = None,
    newest_first: bool = True,
) -> list[dict[str, Any]]:
    """Rows of ``whizorch sagas list``: filtered, newest (highest txid) first, or in id
    order (the order pages are read in) when not ``newest_first``."""
    rows = [_row(r, now) for r in records] + [_pending_row(p, now) for p in pending]
    rows = [
        r for r in rows
        if (status is None or r["status"] == status) and (saga_type is None or r["type"] == saga_type)
    ]  # fmt: skip
    if newest_first:
        rows.sort(key=lambda r: r["txid"], reverse=True)
    else:
        rows.sort(key=lambda r: r["id"])
    return rows


# -- sagas show ----------------------------------------------------------------------------


def no_compensation(st: StepState) -> bool:
    """True for a step the saga "compensated" without running anything: it has no
    compensation (the record says ``compensated`` with no compensation run)."""
    return st.state == "compensated" and st.comp_run == 0


def compensation_state(st: StepState) -> str | None:
    """The truth about a step's compensation: ``none`` (the step has none: nothing was
    undone), ``compensated``, ``gave up``, ``compensating``; None when none was needed."""
    if no_compensation(st):
        return "none"
    return {"compensated": "compensated", "comp_failed": "gave up", "compensating": "compensating"}.get(st.state)


def _compensation(st: StepState) -> str:
    if no_compensation(st):
        return "none: the step has no compensation, nothing was undone"
    if st.comp_run == 0:
        return "compensating (waiting for a region)" if st.state == "compensating" else "-"
    runs = f"{st.comp_run} run{'s' if st.comp_run != 1 else ''}"
    if st.comp_failures:
        runs += f", {st.comp_failures} failed"
    return f"{compensation_state(st) or '-'} ({runs})"


def step_rows(rec: SagaRecord, now: float | None = None) -> list[dict[str, Any]]:
    """One row per step: state, route, runs, failures, duration, compensation, errors.

    ``duration_s`` is ended - started; while a step runs (``now`` given, saga not final)
    ``running_s`` is now - started instead.
    """
    rows = []
    for index, st in enumerate(rec.steps):
        state: str = "done, not compensated" if no_compensation(st) else st.state
        if st.waiting_region:
            state += " (waiting for a region)"
        elif st.retry_at is not None:
            state += f" (retry at +{st.retry_at - rec.created:.2f}s)"
        running = None
        if now is not None and st.started is not None and st.ended is None and not rec.is_final:
            running = round(now - st.started, 3)
        rows.append(
            {
                "index": index, "name": st.name, "state": state, "regions": list(st.regions),
                "route": fmt_route(st.regions), "runs": st.run, "failures": st.failures,
                "started": st.started, "ended": st.ended, "duration_s": _span(st.started, st.ended),
                "running_s": running, "comp_runs": st.comp_run, "comp_failures": st.comp_failures,
                "compensation": _compensation(st), "error": st.error, "comp_error": st.comp_error,
                "traceback": st.traceback, "comp_traceback": st.comp_traceback,
            }
        )  # fmt: skip
    return rows


def _step_name(rec: SagaRecord, index: Any) -> str | None:
    if isinstance(index, int) and 0 <= index < len(rec.steps):
        return rec.steps[index].name
    return None


def timeline_rows(rec: SagaRecord) -> list[dict[str, Any]]:
    """The record's history in time order: seconds since creation, event, step name and
    the entry's other fields as ``detail`` (``region=eu attempt=1``)."""
    rows = []
    for entry in sorted(rec.history, key=lambda h: float(h.get("at") or rec.created)):
        rest = {k: v for k, v in entry.items() if k not in ("at", "event", "step")}
        rows.append(
            {
                "t": _since(rec, entry.get("at")),
                "event": str(entry.get("event", "?")),
                "step": _step_name(rec, entry.get("step")),
                "detail": " ".join(f"{k}={v}" for k, v in rest.items()),
            }
        )
    return rows


def failover_rows(rec: SagaRecord) -> list[dict[str, Any]]:
    """The record's failovers with step names and seconds since creation."""
    rows = []
    for f in rec.failovers:
        rows.append(
            {
                "t": _since(rec, f.get("at")), "step": _step_name(rec, f.get("step")),
                "from": f.get("from"), "to": f.get("to"), "reason": f.get("reason"),
            }
        )  # fmt: skip
    return rows


@attrs.frozen(kw_only=True)
class SagaDetails:
    """What ``sagas show`` reads beside the record: the saga's input and the outputs of
    its completed steps."""

    input: Any = None
    has_input: bool = False
    """False when the submission (which holds the input) is gone."""
    outputs: dict[str, Any] = attrs.Factory(dict)
    """Output by step name, for the steps that completed."""


def record_document(rec: SagaRecord, details: SagaDetails | None = None) -> dict[str, Any]:
    """``SagaRecord.to_dict()`` with every step field present, ``duration_s`` on the saga
    and on each step, ``compensation`` on each step (see compensation_state), and with
    ``details`` the saga's ``input`` (null when its submission is gone) and ``outputs``."""
    doc = rec.to_dict()
    doc["duration_s"] = _span(rec.created, rec.finished)
    for st, step in zip(rec.steps, doc["steps"], strict=True):
        for field in attrs.fields(StepState):  # the record leaves out the unset optional ones
            step.setdefault(field.name, None)
        step["duration_s"] = _span(step["started"], step["ended"])
        step["compensation"] = compensation_state(st)
    if details is not None:
        doc["input"] = details.input if details.has_input else None
        doc["outputs"] = dict(details.outputs)
    return doc



def _json_object(value: bytes) -> dict[str, Any] | None:
    """A JSON object the leader wrote (latency, quarantine notes), or None when the
    value is not one: a view shows what it can."""
    try:
        doc = json.loads(value)
    except (UnicodeDecodeError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
