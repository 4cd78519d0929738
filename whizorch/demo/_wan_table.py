"""The spec's performance table from one ``whizorch demo --wan`` run.

Each row: the spec's figure, what this run measured (p50/p99, n), the physical floor
from the lab's round-trip matrix and the ratio. L is the region of etcd's Raft leader
and q its round trip to the nearest other member; a linearizable write from region R
costs at least RTT(R, L) + q, a saga submitted from L at least q + sum over its steps of
(RTT(L, step region) + q). The demo measures saga coordination (submit -> outcome, less
the handlers' simulated work, for the sagas no retry, failover or shard outage
touched), the region failover and the shard failover (the killed orchestrator's
shards, each led again by another: their median and slowest); the consensus, lock, replication and split-brain rows
are measured by ``bench/bench_wan.py`` and shown here with their floors only. The summary prints
the rows (`whizorch.demo._report.summary_rows`).
"""

from __future__ import annotations

from typing import Any

from whizorch.config import ConsensusConfig
from whizorch.demo import apps
from whizorch.demo._report import SagaRun, Tally, percentile
from whizorch.demo._shards import shard_list
from whizorch.demo._wan import WanPlacement

__all__ = ["SPEC", "undisturbed", "wan_table"]

SPEC: dict[str, tuple[str, float | None]] = {
    "saga": ("< 100 ms, 85 p99", 85.0),
    "consensus": ("< 50 ms, 35 p99", 35.0),
    "region failover": ("< 5 s, 3.2 s", 3200.0),
    "shard failover": ("-", None),
    "replication": ("< 500 ms, 320 p99", 320.0),
    "split-brain": ("< 1 s, 750 ms", 750.0),
    "lock": ("< 20 ms, 15 p99", 15.0),
}
"""The spec's table (issue 9): row -> (its figure as written, its p99 in ms)."""

BENCH = "not measured by the demo: see bench/bench_wan.py"


def undisturbed(t: Tally) -> list[SagaRun]:
    """Completed sagas whose every step ran once where it was sent, with no failover,
    and that were not in flight while their shard had no leader (a shard of the killed
    orchestrator, from the kill until it was led again; the other shards had no outage)."""
    board = t.shards
    outage: dict[int, tuple[float, float]] = {}
    if t.orch_kill is not None:
        for k in board.victim_shards:
            move = board.moves.get(k)
            outage[k] = (board.kill_at, board.kill_at + move.after_s if move is not None else float("inf"))
    out = []
    for run in t.sagas.values():
        if run.status != "completed" or run.finished_at is None or run.failovers:
            continue
        if not run.steps or any(runs != 1 for _, runs in run.steps):
            continue
        window = outage.get(run.shard) if run.shard is not None else None
        if window is not None and run.started_at < window[1] and run.finished_at > window[0]:
            continue
        out.append(run)
    return out


def _row(name: str, spec: str, **fields: Any) -> dict[str, Any]:
    return {"row": name, "spec": spec, "n": 0, "p50_ms": None, "p99_ms": None, "floor_ms": None, "ratio": None,
            "verdict": "", **fields}


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _against_ttl(took_ms: float, ttl_s: int) -> str:
    met = took_ms <= ttl_s * 1000.0 + 1000
    return f"{'met' if met else 'missed'}: {'<=' if met else '>'} lease TTL + 1 s = {ttl_s + 1} s"


def _shard_row(t: Tally, ttl_s: int) -> dict[str, Any]:
    """The killed orchestrator's shards, each led again: n shards, p50 their median and
    p99 their slowest (what the verdict holds against the lease TTL + 1 s)."""
    board = t.shards
    row = _row("shard failover (not in the spec)", SPEC["shard failover"][0], floor_ms=ttl_s * 1000.0)
    slowest, median = board.failover_s()
    if t.orch_kill is None or slowest is None or median is None:
        row["verdict"] = "not observed"
        return row
    row.update(n=len(board.moves), p50_ms=_r(median * 1000), p99_ms=_r(slowest * 1000), ratio=round(slowest / ttl_s, 2))
    at, victim = board.kill_at, set(board.victim_shards)
    busy = sum(1 for r in t.sagas.values() if r.submitted and r.shard in victim and r.started_at <= at
               and (r.finished_at is None or r.finished_at > at))
    new = sorted({m.node for m in board.moves.values()})
    row["verdict"] = (
        f"{_against_ttl(slowest * 1000, ttl_s)} (the slowest); {board.victim}'s shards "
        f"{shard_list(board.victim_shards)} led again by {', '.join(new)}; {busy} of their sagas were in flight at "
        f"the kill (each new leader resumes them first); "
        + ("no other shard changed leader" if not board.upsets else f"{len(board.upsets)} other shard changes")
    )
    return row


def wan_table(t: Tally, wan: WanPlacement, *, ttl_s: int) -> dict[str, Any]:
    """The lab, and the table's rows (JSON-serialisable)."""
    rows: list[dict[str, Any]] = []
    calm = undisturbed(t)
    spec_saga, spec_saga_p99 = SPEC["saga"]
    assert spec_saga_p99 is not None
    for saga in apps.app.sagas.values():
        regions = [step.region or wan.leader for step in saga.steps]
        floor = wan.saga_floor_ms(regions)
        ms = [run.coordination_ms for run in calm if run.saga == saga.name and run.coordination_ms is not None]
        row = _row(f"saga coordination: {saga.name} ({', '.join(regions)})", spec_saga, n=len(ms), floor_ms=_r(floor))
        if ms:
            p50, p99 = percentile(ms, 50), percentile(ms, 99)
            assert p50 is not None and p99 is not None
            row.update(p50_ms=_r(p50), p99_ms=_r(p99), ratio=round(p99 / floor, 2))
            row["verdict"] = f"{'met' if p99 <= spec_saga_p99 else 'missed'} the spec's {spec_saga_p99:g} ms p99" + (
                f" (below the floor, {floor:.0f} ms)" if floor > spec_saga_p99 else "")
        else:
            row["verdict"] = "no undisturbed saga of this type completed"
        rows.append(row)

    ttl_ms = ttl_s * 1000.0
    rk = t.region_kill
    region = _row(f"regional failover ({rk.target if rk else '-'})", SPEC["region failover"][0], floor_ms=ttl_ms)
    if rk is None or t.region_failover_at is None:
        region["verdict"] = "not observed"
    else:
        took = (t.region_failover_at - rk.at) * 1000
        spec_ms = SPEC["region failover"][1]
        assert spec_ms is not None
        region.update(n=1, p50_ms=_r(took), p99_ms=_r(took), ratio=round(took / ttl_ms, 2))
        region["verdict"] = _against_ttl(took, ttl_s) + f"; {'within' if took <= spec_ms else 'above'} the spec's {spec_ms / 1000:g} s"
    rows.append(region)
    rows.append(_shard_row(t, ttl_s))

    floors = ", ".join(f"{r} {wan.put_floor_ms(r):g}" for r in wan.regions)
    rows.append(_row("consensus round trip", SPEC["consensus"][0], verdict=f"{BENCH}; floor from {floors} ms"))
    rows.append(_row("global lock", SPEC["lock"][0], verdict=f"{BENCH}; floor from {floors} ms"))
    lags = ", ".join(f"{r} {wan.rtt(wan.leader, r) / 2:g}" for r in wan.regions)
    rows.append(_row("state replication lag", SPEC["replication"][0], verdict=f"{BENCH}; floor to {lags} ms"))
    contact_s = ConsensusConfig().contact_deadline_s
    rows.append(_row("split-brain detection", SPEC["split-brain"][0],
                     verdict=f"{BENCH}; floor: the orchestrators' contact deadline, {contact_s:g} s"))
    return {
        "mode": wan.mode,
        "mode_reason": wan.mode_reason,
        "regions": list(wan.regions),
        "rtt_ms": {a: dict(row) for a, row in wan.rtt_ms.items()},
        "etcd_leader": wan.leader,
        "quorum_rtt_ms": wan.quorum_rtt_ms,
        "lease_ttl_s": ttl_s,
        "undisturbed_sagas": len(calm),
        "rows": rows,
    }
