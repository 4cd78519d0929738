"""A failed run, readable: seed, schedule, violations, and the sagas involved.

For each saga a violation names (a few at most) the report shows its record the way
``whizorch sagas show`` does (status, steps with state/region/runs/failures, the
history timeline), then what the ledger saw: its effect keys, the handlers' lines and
the results recorded in etcd with their fence tokens. Pure formatting, no IO.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .checker import History, Violation, summarize

__all__ = ["render"]

MAX_SAGAS = 6


def _saga_block(sid: str, history: History, records: Mapping[str, dict[str, Any]], t0: float) -> list[str]:
    plan = next((t for t in history.transfers if t.saga_id == sid), None)
    out = [f"  saga {sid}"]
    if plan is not None:
        out.append(f"    plan: {plan.saga} {plan.source} -> {plan.target} amount {plan.amount}, designed {plan.expected}")
    rec = records.get(sid)
    if rec is None:
        out.append(f"    record: none (status {history.statuses.get(sid, 'no submission')})")
    else:
        created = float(rec.get("created") or 0.0)
        out.append(f"    record: status {rec.get('status')} txid {rec.get('txid')} term {rec.get('leader_term')} "
                   f"error {rec.get('error')!r}")
        for i, st in enumerate(rec.get("steps", [])):
            out.append(
                f"    step {i} {st.get('name')}: {st.get('state')} region {st.get('region')} regions {st.get('regions')} "
                f"run {st.get('run')} failures {st.get('failures')} comp_run {st.get('comp_run')} "
                f"comp_failures {st.get('comp_failures')} error {st.get('error')!r} comp_error {st.get('comp_error')!r}"
            )
        for fo in rec.get("failovers", []):
            out.append(f"    failover: {fo}")
        for h in rec.get("history", []):
            fields = " ".join(f"{k}={v}" for k, v in h.items() if k not in ("at", "event"))
            out.append(f"      {float(h.get('at', 0.0)) - created:+8.3f}s {h.get('event')} {fields}")
    for e in sorted((e for e in history.effects if e.saga_id == sid), key=lambda e: e.revision):
        out.append(f"    effect {e.name}: {e.account} {e.delta:+d} token {e.token} rev {e.revision} "
                   f"attempt {e.attempt} worker {e.worker} pid {e.pid}")
    for a in sorted((a for a in history.attempts if a.saga_id == sid), key=lambda a: a.t):
        rev = f" rev {a.revision}" if a.revision else ""
        detail = f" {a.detail}" if a.detail else ""
        out.append(f"    line +{a.t - t0:7.3f}s {a.name:<6s} {a.event:<9s} token {a.token} attempt {a.attempt} "
                   f"{a.worker} pid {a.pid}{rev}{detail}")
    for r in sorted((r for r in history.results if r.saga_id == sid), key=lambda r: r.fence):
        out.append(f"    result step {r.step} {r.kind}-{r.attempt}: fence {r.fence} ok {r.ok}")
    return out


def render(
    *,
    seed: int,
    options: str,
    replay: str,
    schedule: Sequence[str],
    violations: Sequence[Violation],
    history: History | None,
    records: Mapping[str, dict[str, Any]],
    timings: Mapping[str, float],
    leader_events: Iterable[str],
    t0: float,
) -> str:
    """The report of one run (a short one when it passed)."""
    verdict = "PASSED" if not violations else f"FAILED ({len(violations)} violation(s))"
    out = [f"== fault suite: seed {seed} {verdict} ==", f"options: {options}", f"replay:  {replay}"]
    out.append("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    if history is not None:
        out.append("counts:  " + ", ".join(f"{k} {v}" for k, v in summarize(history).items()))
    if not violations:
        return "\n".join(out)
    out.append(f"schedule ({len(schedule)} faults):")
    out += [f"  {line}" for line in schedule]
    out.append("leadership (orchestrator events):")
    out += [f"  {line}" for line in leader_events]
    out.append("violations:")
    out += [f"  {v}" for v in violations]
    involved: list[str] = []
    for v in violations:
        for sid in v.saga_ids:
            if sid not in involved:
                involved.append(sid)
    if involved and history is not None:
        out.append(f"sagas involved ({len(involved)}; the first {min(len(involved), MAX_SAGAS)} shown):")
        for sid in involved[:MAX_SAGAS]:
            out += _saga_block(sid, history, records, t0)
    return "\n".join(out)
