"""A saga's timeline: one lane per region and a compensation lane, a bar per run.

Pure: built from the record, its past versions (revision, JSON) where etcd still has
them, and the runs' results. A run starts at its dispatch (``dispatched`` or
``compensation_dispatched`` in the history); the revision of the version that first
shows the dispatch is the revision of the txn that put the run's task, so it is the
run's fencing token. A run ends at its result (worker, fence, times, error), at the
history's end event, or, with neither, at the step's next dispatch (the run was lost:
its worker died or its region went down). Markers: failovers (the record's), runs
dispatched again in the same region, and leader-term changes between two versions,
each with the time it cost.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

import attrs

from whizorch._check import is_int, is_number
from whizorch.console._detail import RunResult
from whizorch.saga import SagaRecord

__all__ = ["COMPENSATION", "Bar", "HistoryRow", "Marker", "Timeline", "build_timeline"]

COMPENSATION = "compensation"
"""The lane of compensation runs (whatever region ran them)."""

Outcome = Literal["ok", "failed", "lost", "running", "ended"]

_END_EVENTS = {
    ("run", "step_done"): "ok",
    ("run", "run_failed"): "failed",
    ("compensate", "compensated"): "ok",
    ("compensate", "compensation_failed"): "failed",
}


@attrs.define(kw_only=True)
class Bar:
    """One run of a step (or of its compensation)."""

    lane: str
    step: int
    step_name: str
    kind: str
    attempt: int
    region: str
    start: float
    end: float | None
    """None while the run is still going."""
    outcome: Outcome
    worker: str | None = None
    """The worker's name from its result, else the lease (hex) its task was put on."""
    fence: int | None = None
    revision: int | None = None
    """The revision of the txn that dispatched it."""
    error: str | None = None
    again: bool = False
    """Put again on another worker under the same attempt (a rebuild found its task gone)."""


@attrs.frozen(kw_only=True)
class Marker:
    """A failover, a run dispatched again, or a leader change."""

    at: float
    kind: Literal["failover", "redispatch", "leader"]
    label: str
    cost_s: float | None
    lane: str | None = None


@attrs.frozen(kw_only=True)
class HistoryRow:
    at: float | None
    t: float
    event: str
    step: str | None
    detail: str
    revision: int | None


@attrs.frozen(kw_only=True)
class Timeline:
    start: float
    end: float
    lanes: list[str]
    bars: list[Bar]
    markers: list[Marker]
    history: list[HistoryRow]
    leader_terms: list[int]


def _sig(entry: Any) -> str:
    return json.dumps(entry, sort_keys=True, default=repr)


def _num(value: Any) -> float | None:
    return float(value) if is_number(value, finite=False) else None


def _int(value: Any) -> int | None:
    return value if is_int(value) else None


def _step_of(raw: dict[str, Any], index: int) -> dict[str, Any]:
    steps = raw.get("steps")
    if isinstance(steps, list) and 0 <= index < len(steps) and isinstance(steps[index], dict):
        found: dict[str, Any] = steps[index]
        return found
    return {}


def build_timeline(
    rec: SagaRecord,
    versions: Sequence[tuple[int, dict[str, Any]]] | None,
    results: Sequence[RunResult],
    regions: Sequence[str],
    now: float,
) -> Timeline:
    """The timeline of ``rec`` (see the module's docstring)."""
    names = [st.name for st in rec.steps]

    def name(i: Any) -> str:
        return names[i] if isinstance(i, int) and 0 <= i < len(names) else "?"

    # the revision at which each history entry first appeared, and the version there
    first_rev: dict[str, int] = {}
    at_rev: dict[int, dict[str, Any]] = {}
    for rev, raw in versions or ():
        at_rev[rev] = raw
        for entry in raw.get("history", ()) if isinstance(raw.get("history"), list) else ():
            first_rev.setdefault(_sig(entry), rev)

    history = sorted(
        (h for h in rec.history if isinstance(h, dict)), key=lambda h: _num(h.get("at")) or rec.created
    )
    rows = []
    for h in history:
        rest = {k: v for k, v in h.items() if k not in ("at", "event", "step")}
        at = _num(h.get("at"))
        rows.append(HistoryRow(
            at=at, t=round(max(0.0, (at or rec.created) - rec.created), 4), event=str(h.get("event", "?")),
            step=name(h["step"]) if "step" in h else None, detail=" ".join(f"{k}={v}" for k, v in rest.items()),
            revision=first_rev.get(_sig(h)),
        ))  # fmt: skip

    # dispatches, from the history, and runs put again under the same attempt, from the versions
    bars: list[Bar] = []
    for h in history:
        event = h.get("event")
        if event not in ("dispatched", "compensation_dispatched"):
            continue
        step, attempt, at = _int(h.get("step")), _int(h.get("attempt")), _num(h.get("at"))
        if step is None or attempt is None or at is None:
            continue
        kind = "run" if event == "dispatched" else "compensate"
        drev = first_rev.get(_sig(h))
        lease = _step_of(at_rev[drev], step).get("worker") if drev is not None and drev in at_rev else None
        region = str(h.get("region", "?"))
        bars.append(Bar(
            lane=region if kind == "run" else COMPENSATION, step=step, step_name=name(step), kind=kind,
            attempt=attempt, region=region, start=at, end=None, outcome="running",
            worker=lease if isinstance(lease, str) else None, fence=drev, revision=drev,
        ))  # fmt: skip
    prev_steps: dict[int, tuple[Any, Any, Any]] = {}
    terms: list[int] = []
    markers: list[Marker] = []
    prev_raw: dict[str, Any] | None = None
    for rev, raw in versions or ():
        term = _int(raw.get("leader_term"))
        if term is not None and (not terms or terms[-1] != term):
            if terms and prev_raw is not None:
                changed, before = _num(raw.get("updated")), _num(prev_raw.get("updated"))
                if changed is not None:
                    markers.append(Marker(
                        at=changed, kind="leader", label=f"leader term {terms[-1]} -> {term}",
                        cost_s=round(changed - before, 3) if before is not None else None,
                    ))  # fmt: skip
            terms.append(term)
        listed = raw.get("steps")
        for i, st in enumerate(listed if isinstance(listed, list) else []):
            if not isinstance(st, dict):
                continue
            now_state = (st.get("run"), st.get("comp_run"), st.get("worker"))
            before_state = prev_steps.get(i)
            prev_steps[i] = now_state
            if before_state is None or not now_state[2] or now_state[2] == before_state[2]:
                continue
            if now_state[:2] != before_state[:2] or st.get("state") not in ("dispatched", "compensating"):
                continue  # a new attempt: its dispatch is in the history
            kind = "run" if st.get("state") == "dispatched" else "compensate"
            again_attempt = _int(st.get("run") if kind == "run" else st.get("comp_run"))
            again_at = _num(raw.get("updated"))
            region = str(st.get("region") or "?")
            if again_attempt is None or again_at is None:
                continue
            bars.append(Bar(
                lane=region if kind == "run" else COMPENSATION, step=i, step_name=name(i), kind=kind,
                attempt=again_attempt, region=region, start=again_at, end=None, outcome="running", worker=str(now_state[2]),
                fence=rev, revision=rev, again=True,
            ))  # fmt: skip
        prev_raw = raw
    bars.sort(key=lambda b: (b.start, b.revision or 0))

    # ends: the result, else the history's end event, else the next dispatch of the step
    by_run = {(r.region, r.step, r.kind, r.attempt): r for r in results}
    last_of: dict[tuple[str, int, str, int], Bar] = {}
    for b in bars:
        last_of[(b.region, b.step, b.kind, b.attempt)] = b
    ends = [h for h in history if (h.get("event") in ("step_done", "run_failed", "compensated", "compensation_failed"))]
    for i, b in enumerate(bars):
        key = (b.region, b.step, b.kind, b.attempt)
        nxt = next((o for o in bars[i + 1 :] if o.step == b.step and o.kind == b.kind), None)
        res = by_run.get(key) if last_of[key] is b else None
        if res is not None and res.ended is not None:
            b.end, b.outcome = res.ended, "ok" if res.ok else "failed"
            b.worker = res.worker or b.worker
            b.fence = res.fence or b.fence
            b.error = res.error
            continue
        end = next(
            (h for h in ends if _int(h.get("step")) == b.step and _int(h.get("attempt")) == b.attempt
             and (b.kind, h.get("event")) in _END_EVENTS and (_num(h.get("at")) or 0) >= b.start
             and (nxt is None or (_num(h.get("at")) or 0) <= nxt.start)),
            None,
        )  # fmt: skip
        if end is not None:
            b.end, b.outcome = _num(end.get("at")), _END_EVENTS[(b.kind, str(end.get("event")))]  # type: ignore[assignment]
            b.error = str(end["error"]) if end.get("error") else None
            if b.outcome == "failed" and b.error is not None and "lost its claim" in b.error:
                b.outcome = "lost"  # its worker died (or lost its lease): no result, the run was lost
        elif nxt is not None:
            b.end, b.outcome = nxt.start, "lost"
        elif rec.is_final:
            b.end, b.outcome = rec.finished or rec.updated, "ended"

    # markers: failovers, and lost runs dispatched again in their region
    covered: set[int] = set()
    for f in rec.failovers:
        at, step = _num(f.get("at")), _int(f.get("step"))
        if at is None:
            continue
        lost = next((b for b in reversed(bars) if b.step == step and b.start <= at and b.outcome == "lost"), None)
        nxt = next((b for b in bars if b.step == step and b.start >= at), None)
        cost = round((nxt.start if nxt else at) - lost.start, 3) if lost is not None else None
        if lost is not None:
            covered.add(id(lost))
        markers.append(Marker(
            at=at, kind="failover", lane=str(f.get("to")), cost_s=cost,
            label=f"failover {f.get('from')} -> {f.get('to')} ({f.get('reason')})",
        ))  # fmt: skip
    for i, b in enumerate(bars):
        if b.outcome != "lost" or id(b) in covered or b.end is None:
            continue
        nxt = next((o for o in bars[i + 1 :] if o.step == b.step and o.kind == b.kind), None)
        if nxt is not None and nxt.region == b.region:
            markers.append(Marker(
                at=nxt.start, kind="redispatch", lane=b.lane, cost_s=round(nxt.start - b.start, 3),
                label=f"{b.step_name} dispatched again in {b.region} (run lost)",
            ))  # fmt: skip
    markers.sort(key=lambda m: m.at)

    lanes = [r for r in regions]
    for b in bars:
        if b.lane != COMPENSATION and b.lane not in lanes:
            lanes.append(b.lane)
    lanes.append(COMPENSATION)
    last = rec.finished if rec.is_final and rec.finished else now
    last = max([last, *(b.end for b in bars if b.end is not None), *(m.at for m in markers)])
    return Timeline(
        start=rec.created, end=max(last, rec.created + 0.001), lanes=lanes, bars=bars, markers=markers,
        history=rows, leader_terms=terms,
    )  # fmt: skip
