"""What the saga demo saw (`Tally`), and the summary and verdict made from it.

The tally is plain data the runner fills in as results and role events arrive; both
displays read it. `summarise` turns it into the JSON-serialisable summary
(``--json-summary``) with the verdict; `summary_rows` into the lines both displays print.
"""

from __future__ import annotations

import collections
import math
import os
import time
from typing import Any

import attrs

from whizorch.demo._shards import ShardBoard, shard_list
from whizorch.saga import SagaResult

__all__ = ["Kill", "SagaRun", "Tally", "percentile", "shard_figures", "shard_rows", "summarise", "summary_rows", "wan_rows"]

FINAL = ("completed", "compensated", "failed")


@attrs.define
class SagaRun:
    """One saga the demo submitted, as the demo saw it."""

    saga_id: str
    saga: str
    expect: str
    started_at: float
    """Monotonic time the demo began submitting it."""
    shard: int | None = None
    """Its shard in the demo's namespace."""
    submitted: bool = False
    submit_error: str | None = None
    status: str | None = None
    """The final status the demo's SagaClient saw; None while unfinished."""
    finished_at: float | None = None
    failovers: list[dict[str, Any]] = attrs.Factory(list)
    steps: list[tuple[str | None, int]] = attrs.Factory(list)
    """Each step's region and how many times it was sent there (from the final record)."""
    work_ms: float = 0.0
    """The handlers' simulated work in the outputs (``work_ms``), summed."""

    @property
    def latency_ms(self) -> float | None:
        """Submit -> final outcome, in milliseconds."""
        return None if self.finished_at is None else (self.finished_at - self.started_at) * 1000

    @property
    def coordination_ms(self) -> float | None:
        """The latency less the handlers' work: what orchestration itself took."""
        latency = self.latency_ms
        return None if latency is None else latency - self.work_ms


@attrs.define
class Kill:
    """Processes the demo SIGKILLed on purpose."""

    what: str
    """``region`` or ``orchestrator``."""
    target: str
    """The region's name, or the orchestrator's node id."""
    pids: list[int]
    names: list[str]
    at: float
    """Monotonic time of the kill."""
    wall: float
    """Wall-clock time of the kill (orchestrator events carry wall-clock times)."""


@attrs.define
class Tally:
    """Everything the demo has seen so far."""

    started: float = attrs.Factory(time.monotonic)
    run_start: float | None = None
    """Monotonic time the saga stream began (None during setup)."""
    run_end: float | None = None
    """Monotonic time the stream stopped."""
    phase: str = "setup"
    shards: ShardBoard = attrs.Factory(ShardBoard)
    """Who leads each shard, and what the orchestrator's kill moved."""
    healthy: list[str] = attrs.Factory(list)
    workers: dict[str, list[tuple[str, int, bool]]] = attrs.Factory(dict)
    """Region -> [(worker name, pid, alive)]."""
    orchestrators: list[tuple[str, int, bool]] = attrs.Factory(list)
    """[(node id, pid, alive)]."""
    sagas: dict[str, SagaRun] = attrs.Factory(dict)
    steps_by_region: collections.Counter[str] = attrs.Factory(collections.Counter)
    retried_runs: int = 0
    failovers: list[dict[str, Any]] = attrs.Factory(list)
    """Every failover event the leaders printed (``_at``: when the demo read it)."""
    region_kill: Kill | None = None
    region_failover_at: float | None = None
    region_saga_done_at: float | None = None
    orch_kill: Kill | None = None
    audit: dict[str, str | None] = attrs.Factory(dict)
    """Saga id -> status in etcd at the end (None: no record and no submission)."""
    audited: bool = False
    processes: list[dict[str, Any]] = attrs.Factory(list)
    """Every process the demo started: name, kind, pid, killed (etcd members too)."""
    etcd: str = ""
    namespace: str = ""
    endpoints: list[str] = attrs.Factory(list)
    drain_s: float = 0.0

    def now(self) -> float:
        """Seconds since the stream began (0 during setup)."""
        return 0.0 if self.run_start is None else time.monotonic() - self.run_start

    def since_run(self, at: float | None) -> float | None:
        """A monotonic time as seconds since the stream began."""
        return None if at is None or self.run_start is None else at - self.run_start

    def counts(self) -> collections.Counter[str]:
        """Sagas by status, with ``submitted`` and ``in flight``."""
        c: collections.Counter[str] = collections.Counter()
        for run in self.sagas.values():
            c["submitted"] += run.submitted
            c[run.status or ("in flight" if run.submit_error is None else "not submitted")] += 1
        return c

    def finish(self, run: SagaRun, result: SagaResult) -> None:
        """Record a saga's outcome."""
        run.status = result.status
        run.finished_at = time.monotonic()
        run.failovers = failovers = list(result.failovers)
        run.steps = [(st.region, st.run) for st in result.record.steps]
        run.work_ms = sum(
            float(out["work_ms"]) for out in result.outputs.values()
            if isinstance(out, dict) and isinstance(out.get("work_ms"), (int, float))
        )
        # failed runs of steps that then succeeded: transient errors, runs lost with a worker
        self.retried_runs += sum(st.failures for st in result.record.steps if st.state in ("done", "compensated"))
        for output in result.outputs.values():
            if isinstance(output, dict) and isinstance(output.get("region"), str):
                self.steps_by_region[output["region"]] += 1
        kill = self.region_kill
        if kill is not None and self.region_saga_done_at is None and any(f.get("from") == kill.target for f in failovers):
            self.region_saga_done_at = run.finished_at


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # the pid was reused by someone else's process
        return True
    return False


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def summarise(t: Tally, *, options: dict[str, Any]) -> dict[str, Any]:
    """The summary as JSON-serialisable data, with ``ok`` and the ``reasons`` it is not."""
    runs = list(t.sagas.values())
    submitted = [r for r in runs if r.submitted]
    by_status = collections.Counter(r.status for r in submitted if r.status)
    unfinished = [r for r in submitted if r.status is None]
    unexpected = [r for r in submitted if r.status is not None and r.status != r.expect]
    lost = [
        r for r in submitted
        if t.audited and (t.audit.get(r.saga_id) is None or (r.status is not None and t.audit.get(r.saga_id) != r.status))
    ]
    completed_ms = [r.latency_ms for r in submitted if r.status == "completed" and r.latency_ms is not None]
    by_saga: dict[str, dict[str, int]] = {}
    for r in submitted:
        row = by_saga.setdefault(r.saga, {"submitted": 0})
        row["submitted"] += 1
        row[r.status or "unfinished"] = row.get(r.status or "unfinished", 0) + 1
    ends = [r.finished_at for r in submitted if r.finished_at is not None]
    window = (max(ends) - t.run_start) if ends and t.run_start is not None else 0.0
    finished = sum(by_status.values())
    routes = collections.Counter(f"{f.get('from')}->{f.get('to')}" for f in t.failovers)

    rk, ok_ = t.region_kill, t.orch_kill
    region_failover_s = None
    if rk is not None and t.region_failover_at is not None:
        region_failover_s = t.region_failover_at - rk.at
    board = t.shards
    shards = shard_figures(t, ttl_s=options.get("ttl_s"))
    slowest, median = board.failover_s()

    killed_pids = {pid for k in (rk, ok_) if k is not None for pid in k.pids}
    processes = [dict(p, killed=p["pid"] in killed_pids, gone=_gone(p["pid"])) for p in t.processes]

    reasons: list[str] = []
    if rk is None:
        reasons.append("no region was killed")
    elif region_failover_s is None:
        reasons.append(f"no failover away from region {rk.target} was observed")
    if ok_ is None:
        reasons.append("no orchestrator was killed")
    elif not board.victim_shards:
        reasons.append(f"{ok_.target} led no shard when it was killed")
    elif board.waiting:
        reasons.append(f"shards {shard_list(board.waiting)} of {ok_.target} were not led again after it was killed")
    if board.upsets:
        upset = shard_list({u.shard for u in board.upsets})
        reasons.append(f"shards {upset} changed leader though their leader was not killed")
    if not submitted:
        reasons.append("no saga was submitted")
    if len(submitted) < len(runs):
        reasons.append(f"{len(runs) - len(submitted)} submissions failed")
    if unfinished:
        reasons.append(f"{len(unfinished)} sagas did not finish within {t.drain_s:g}s after the stream stopped")
    if lost:
        reasons.append(f"{len(lost)} sagas lost (etcd has no record, or another outcome)")
    if by_status["failed"]:
        reasons.append(f"{by_status['failed']} sagas failed (a compensation gave up)")
    if unexpected:
        reasons.append(f"{len(unexpected)} sagas ended other than designed (e.g. {unexpected[0].saga_id}: {unexpected[0].status})")
    left = [f"{p['name']} (pid {p['pid']})" for p in processes if not p["gone"]]
    if left:
        reasons.append(f"still running after cleanup: {', '.join(left)}")
    ok = not reasons
    verdict = (
        f"OK: region and orchestrator failovers observed ({len(board.moves)} shards led again, no other shard moved); "
        f"all {len(submitted)} sagas reached their designed outcome; none lost"
        if ok else "FAILED: " + "; ".join(reasons)
    )
    return {
        "ok": ok,
        "verdict": verdict,
        "reasons": reasons,
        "namespace": t.namespace,
        "etcd": t.etcd,
        "endpoints": t.endpoints,
        "options": options,
        "sagas": {
            "submitted": len(submitted),
            "completed": by_status["completed"],
            "compensated": by_status["compensated"],
            "failed": by_status["failed"],
            "unfinished": len(unfinished),
            "lost": len(lost),
            "not_submitted": len(runs) - len(submitted),
            "designed_to_compensate": sum(r.expect == "compensated" for r in submitted),
            "unexpected": len(unexpected),
        },
        "by_saga": by_saga,
        "latency_ms": {
            "count": len(completed_ms),
            "p50": _r(percentile(completed_ms, 50), 1),
            "p99": _r(percentile(completed_ms, 99), 1),
            "max": _r(max(completed_ms), 1) if completed_ms else None,
        },
        "throughput": {
            "window_s": _r(window, 2),
            "sagas_per_s": _r(finished / window, 2) if window > 0 else None,
            "steps_per_s": _r(sum(t.steps_by_region.values()) / window, 2) if window > 0 else None,
        },
        "steps_by_region": dict(sorted(t.steps_by_region.items())),
        "retried_runs": t.retried_runs,
        "failovers": {
            "steps": len(t.failovers),
            "sagas": len({f.get("saga_id") for f in t.failovers}),
            "routes": dict(routes),
        },
        "region_killed": rk.target if rk else None,
        "region_killed_at_s": _r(t.since_run(rk.at), 2) if rk else None,
        "region_failover_s": _r(region_failover_s),
        "region_failover_first_saga_done_s": _r(t.region_saga_done_at - rk.at) if rk and t.region_saga_done_at else None,
        "orchestrator_killed": ok_.target if ok_ else None,
        "orchestrator_killed_at_s": _r(t.since_run(ok_.at), 2) if ok_ else None,
        "shard_failover_s": _r(slowest),
        "shard_failover_median_s": _r(median),
        "shard_failover_first_saga_done_s": _r(board.first_saga.after_s) if board.first_saga else None,
        "shards": shards,
        "killed": [
            {"what": k.what, "target": k.target, "names": k.names, "pids": k.pids, "at_s": _r(t.since_run(k.at), 2)}
            for k in (rk, ok_) if k is not None
        ],
        "processes": processes,
    }


def shard_figures(t: Tally, *, ttl_s: float | None) -> dict[str, Any]:
    """The ``shards`` part of the summary: the layout, the victim's shards and who led
    each again after how long, the shards that kept their leaders and how many sagas
    finished on those while the victim's waited (they should not stall)."""
    board = t.shards
    out = board.to_json([name for name, _, _ in t.orchestrators])
    slowest, _ = board.failover_s()
    out["ttl_s"] = ttl_s
    out["within_ttl_plus_1s"] = None if slowest is None or ttl_s is None else slowest <= ttl_s + 1
    victim, at = set(board.victim_shards), board.kill_at
    out["in_flight_at_kill"] = sum(
        1 for r in t.sagas.values()
        if r.submitted and r.shard in victim and r.started_at <= at and (r.finished_at is None or r.finished_at > at)
    ) if victim else None
    out["others_finished_during_failover"] = sum(
        1 for r in t.sagas.values()
        if r.finished_at is not None and r.shard is not None and r.shard not in victim and at <= r.finished_at <= at + slowest
    ) if victim and slowest is not None else None
    first = board.first_saga
    out["first_saga_done"] = attrs.asdict(first) if first is not None else None
    return out


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def summary_rows(s: dict[str, Any], *, wan_table: bool = True) -> list[tuple[str, str]]:
    """(label, text) lines of the summary, for both displays (``wan_table=False``: without
    the table of a ``--wan`` run, for a display that draws it itself)."""
    n = s["sagas"]
    if not n["submitted"] and not n["not_submitted"]:  # it failed before the stream began
        return [("verdict", s["verdict"]), *([("logs", f"the role processes' stderr is kept in {s['logs']}")] if s.get("logs") else [])]
    rows = [
        ("sagas", (
            f"{n['submitted']} submitted: {n['completed']} completed, {n['compensated']} compensated "
            f"({n['designed_to_compensate']} designed to), {n['failed']} failed, {n['unfinished']} unfinished, "
            f"{n['lost']} lost"
        )),
    ]
    for name, row in sorted(s["by_saga"].items()):
        rest = ", ".join(f"{v} {k}" for k, v in row.items() if k != "submitted")
        rows.append((f"  {name}", f"{row['submitted']}: {rest}"))
    lat, thr = s["latency_ms"], s["throughput"]
    rows.append(("latency", f"completed sagas, submit -> outcome: p50 {_ms(lat['p50'])}, p99 {_ms(lat['p99'])}, "
                            f"max {_ms(lat['max'])} (n={lat['count']})"))
    if thr["sagas_per_s"] is not None:
        rows.append(("throughput", f"{thr['sagas_per_s']:.1f} sagas/s, {thr['steps_per_s']:.1f} steps/s over {thr['window_s']:.1f} s"))
    regions = ", ".join(f"{r} {c}" for r, c in s["steps_by_region"].items()) or "-"
    rows.append(("steps", f"by region: {regions}"))
    rows.append(("retries", f"{s['retried_runs']} failed runs retried, then succeeded (transient errors, runs lost with a worker)"))
    fo = s["failovers"]
    routes = ", ".join(f"{k.replace('->', ' -> ')} {v}" for k, v in fo["routes"].items())
    rows.append(("failovers", f"{fo['steps']} steps moved in {fo['sagas']} sagas" + (f" ({routes})" if routes else "")))
    if s["region_killed"]:
        rows.append((f"region {s['region_killed']}", (
            f"SIGKILLed at {s['region_killed_at_s']:.1f}s; first failover after {_s(s['region_failover_s'])}, "
            f"first failed-over saga done after {_s(s['region_failover_first_saga_done_s'])}"
        )))
    if s.get("shards"):
        rows += shard_rows(s)
    killed = [p for p in s["processes"] if p["killed"]]
    if killed:
        rows.append(("killed", ", ".join(f"{p['name']} pid {p['pid']}" for p in killed)))
    alive = [p for p in s["processes"] if not p["gone"]]
    rows.append(("processes", f"{len(s['processes'])} started, " + (
        "all gone" if not alive else "STILL RUNNING: " + ", ".join(f"{p['name']} pid {p['pid']}" for p in alive)
    )))
    if s.get("wan"):
        rows += wan_rows(s["wan"]) if wan_table else wan_rows(s["wan"])[:1]
    if s.get("logs"):
        rows.append(("logs", f"the role processes' stderr is kept in {s['logs']}"))
    rows.append(("verdict", s["verdict"]))
    return rows


def shard_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """The summary's ``shards`` lines: the layout at the kill, each of the victim's
    shards led again by whom after how long, the slowest and median against the lease
    TTL + 1 s, and the shards that kept their leaders."""
    sh = s["shards"]
    layout = sh["at_kill"] if sh["at_kill"] is not None else sh["now"]
    when = "at the kill" if sh["at_kill"] is not None else "now"
    rows = [("shards", f"{sh['count']} over {len(sh['orchestrators'])} orchestrators, {when}: "
                       + " | ".join(f"{node} {shard_list(led)}" for node, led in layout.items()))]
    victim = sh["victim"]
    if victim is None:
        return rows
    moved = ", ".join(f"{m['shard']} by {m['to']} after {m['after_s']:.2f} s" for m in sh["moved"]) or "none"
    text = f"{victim} SIGKILLed at {s['orchestrator_killed_at_s']:.1f}s leading {shard_list(sh['victim_shards'])}; led again: {moved}"
    if sh["not_led_again"]:
        text += f"; NOT led again: {shard_list(sh['not_led_again'])}"
    rows.append(("", text))
    within, ttl = sh["within_ttl_plus_1s"], sh["ttl_s"]
    bound = "" if within is None else f" ({'met' if within else 'missed'}: {'<=' if within else '>'} lease TTL + 1 s = {ttl + 1:g} s)"
    rows.append(("", f"failover slowest {_s(s['shard_failover_s'])}, median {_s(s['shard_failover_median_s'])}{bound}; "
                     f"first saga done on a moved shard after {_s(s['shard_failover_first_saga_done_s'])}"))
    if sh["others_changed"]:
        rows.append(("", "other shards CHANGED leader: " + ", ".join(
            f"{c['shard']} {c['from'] or 'none'} -> {c['to'] or 'none'}" for c in sh["others_changed"])))
    elif sh["kept_their_leader"]:
        meanwhile = sh["others_finished_during_failover"]
        rows.append(("", f"shards {shard_list(sh['kept_their_leader'])} kept their leaders" + (
            f"; {meanwhile} sagas finished on them during the failover" if meanwhile is not None else "")))
    return rows


def _wan_ms(value: float | None, *, seconds: bool) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f} s" if seconds else f"{value:.0f} ms"


def wan_rows(w: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) lines of the spec's table of a ``--wan`` run (`whizorch.demo._wan_table`)."""
    pairs = ", ".join(
        f"{a}-{b} {w['rtt_ms'][a][b]:g}" for i, a in enumerate(w["regions"]) for b in w["regions"][i + 1 :]
    )
    mode = w["mode"] if w["mode"] == "netns" else f"approximate: {w['mode_reason']}"
    out = [
        ("region lab", f"{mode}; round trips (ms) {pairs}; etcd's leader in {w['etcd_leader']}, "
                       f"q {w['quorum_rtt_ms']:g} ms; lease TTL {w['lease_ttl_s']} s"),
        ("spec table", f"this run next to the spec and the floor from the matrix "
                       f"(saga rows: {w['undisturbed_sagas']} sagas no retry, failover or shard outage touched)"),
    ]
    cells = [["row", "spec", "p50 / p99 (n)", "floor", "p99/floor"]]
    for row in w["rows"]:
        seconds = "failover" in row["row"]
        measured = "-" if not row["n"] else (
            f"{_wan_ms(row['p50_ms'], seconds=seconds)} / {_wan_ms(row['p99_ms'], seconds=seconds)} ({row['n']})")
        cells.append([row["row"], row["spec"], measured, _wan_ms(row["floor_ms"], seconds=seconds),
                      "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"])
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    for i, c in enumerate(cells):
        line = "  ".join(x.ljust(wd) for x, wd in zip(c, widths, strict=True))
        out.append(("", line))
        if i:
            out.append(("", "    " + w["rows"][i - 1]["verdict"]))
    return out
