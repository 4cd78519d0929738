"""The pure parts of ``whizorch demo --wan``: the floors a placement gives, which sagas
count as undisturbed, and the spec's table built from a tally (no etcd, no lab)."""

from __future__ import annotations

from typing import Any

import pytest

from whizorch.demo._report import Kill, SagaRun, Tally, summary_rows
from whizorch.demo._wan import WanPlacement
from whizorch.demo._wan_table import undisturbed, wan_table

RTT = {"eu": {"us": 80.0, "ap": 200.0}, "us": {"eu": 80.0, "ap": 150.0}, "ap": {"eu": 200.0, "us": 150.0}}


def placement(leader: str = "eu") -> WanPlacement:
    """The default lab's placement with etcd's leader in ``leader``."""
    return WanPlacement(
        mode="netns", mode_reason="", regions=("eu", "us", "ap"), rtt_ms=RTT, leader=leader, election_ms=2000,
        etcd_version="3.5.1", endpoints={r: [f"{r}:2379"] for r in RTT}, commands={r: [] for r in RTT},
    )


def run(sid: str, saga: str, start: float, latency_s: float, *, steps: list[tuple[str | None, int]], work_ms: float = 0.0,
        status: str = "completed", failovers: list[dict[str, Any]] | None = None, shard: int | None = None) -> SagaRun:
    """A saga the demo saw end ``latency_s`` after ``start`` (on ``shard``)."""
    r = SagaRun(sid, saga, "completed", start, submitted=True, status=status, finished_at=start + latency_s, shard=shard)
    r.steps = steps
    r.work_ms = work_ms
    r.failovers = failovers or []
    return r


@pytest.mark.parametrize(
    ("leader", "q", "floors"),
    [("eu", 80.0, {"eu": 80.0, "us": 160.0, "ap": 280.0}), ("ap", 150.0, {"eu": 350.0, "us": 300.0, "ap": 150.0})],
)
def test_floors_follow_the_leaders_region(leader: str, q: float, floors: dict[str, float]) -> None:
    """q is the leader's round trip to its nearest member; a write from R costs RTT(R, L) + q; etcd's least TTL is 1.5 x the election timeout."""
    p = placement(leader)
    assert p.quorum_rtt_ms == q
    assert {r: p.put_floor_ms(r) for r in p.regions} == floors
    assert p.saga_floor_ms(["eu", "us", "ap"]) == q + sum(floors.values())
    assert p.min_ttl_s == 3


def test_placement_round_trips_through_json() -> None:
    """The outer demo writes the placement as JSON and the placed demo reads the same thing back."""
    p = placement()
    assert WanPlacement.from_json(p.to_json()) == p


def killed(t: Tally, *, at: float = 10.0, moves: dict[int, tuple[str, float]]) -> None:
    """Shards 0 and 2 led by orch-1, 1 and 3 by orch-2; orch-1 killed at ``at``; ``moves``:
    shard -> (new leader, seconds after the kill)."""
    t.orchestrators = [("orch-1", 1, False), ("orch-2", 2, True)]
    board = t.shards
    board.count = 4
    for k in range(4):
        board.on_leader("orch-1" if k % 2 == 0 else "orch-2", k, 10 + k, at=0.0, wall=None)
    board.on_kill("orch-1", at=at, wall=1000.0)
    t.orch_kill = Kill(what="orchestrator", target="orch-1", pids=[1], names=["orch-1"], at=at, wall=1000.0)
    for k, (node, after) in moves.items():
        board.on_leader(node, k, 100 + k, at=at + after, wall=1000.0 + after)


def test_undisturbed_leaves_out_retries_failovers_and_the_outage_of_the_killed_orchestrators_shards() -> None:
    """Only completed sagas whose steps each ran once, with no failover, outside their shard's leaderless window count: a saga of a shard that kept its leader counts through the kill."""
    t = Tally()
    ok: list[tuple[str | None, int]] = [("us", 1), ("us", 1), ("ap", 1)]
    t.sagas = {
        "calm": run("calm", "order", 0.0, 1.0, steps=ok, shard=0),
        "retried": run("retried", "order", 0.0, 1.0, steps=[("us", 2), ("us", 1), ("ap", 1)], shard=1),
        "moved": run("moved", "order", 0.0, 1.0, steps=ok, failovers=[{"from": "us", "to": "eu"}], shard=1),
        "compensated": run("compensated", "order", 0.0, 1.0, steps=ok, status="compensated", shard=1),
        "outage": run("outage", "order", 9.0, 4.0, steps=ok, shard=0),
        "outage-2": run("outage-2", "order", 11.0, 1.5, steps=ok, shard=2),
        "kept-leader": run("kept-leader", "order", 9.0, 4.0, steps=ok, shard=1),
        "after": run("after", "order", 13.0, 1.0, steps=ok, shard=0),
        "after-2": run("after-2", "order", 14.0, 1.0, steps=ok, shard=2),
    }
    killed(t, moves={0: ("orch-2", 2.5), 2: ("orch-2", 3.5)})
    assert sorted(r.saga_id for r in undisturbed(t)) == ["after", "after-2", "calm", "kept-leader"]


def test_the_table_has_the_spec_rows_with_floors_and_ratios() -> None:
    """Saga rows take coordination time (latency less work) against their floors; failovers against the TTL; the rest point at bench_wan."""
    t = Tally()
    t.sagas = {
        f"o{i}": run(f"o{i}", "order", float(i), 0.9, steps=[("us", 1), ("us", 1), ("ap", 1)], work_ms=100.0)
        for i in range(10)
    }
    t.region_kill = Kill(what="region", target="us", pids=[1], names=["us-1"], at=100.0, wall=0.0)
    t.region_failover_at = 103.2
    w = wan_table(t, placement(), ttl_s=3)
    rows = {r["row"]: r for r in w["rows"]}
    order = rows["saga coordination: order (us, us, ap)"]
    assert (order["n"], order["floor_ms"], order["p50_ms"], order["p99_ms"]) == (10, 680.0, 800.0, 800.0)
    assert order["ratio"] == round(800 / 680, 2) and order["verdict"].startswith("missed the spec's 85 ms p99")
    assert rows["saga coordination: transfer (eu, us, ap)"]["n"] == 0
    region = rows["regional failover (us)"]
    assert (region["p99_ms"], region["floor_ms"]) == (pytest.approx(3200.0), 3000.0)
    assert region["verdict"].startswith("met: <= lease TTL + 1 s = 4 s")
    assert rows["shard failover (not in the spec)"]["verdict"] == "not observed"
    for name in ("consensus round trip", "global lock", "state replication lag", "split-brain detection"):
        assert "see bench/bench_wan.py" in rows[name]["verdict"]
    assert w["undisturbed_sagas"] == 10 and w["quorum_rtt_ms"] == 80.0


def test_the_shard_failover_row_holds_the_slowest_of_the_killed_orchestrators_shards_against_the_ttl() -> None:
    """The shard failover row: n = the victim's shards led again, p50 their median, p99 the slowest, met or missed by TTL + 1 s; sagas of those shards in flight at the kill counted."""
    t = Tally()
    t.sagas = {
        "busy": run("busy", "order", 9.0, 4.0, steps=[("us", 1)], shard=0),
        "other": run("other", "order", 9.0, 4.0, steps=[("us", 1)], shard=1),
    }
    killed(t, moves={0: ("orch-2", 2.0), 2: ("orch-2", 3.5)})
    row = {r["row"]: r for r in wan_table(t, placement(), ttl_s=3)["rows"]}["shard failover (not in the spec)"]
    assert (row["n"], row["p50_ms"], row["p99_ms"], row["floor_ms"]) == (2, 2750.0, 3500.0, 3000.0)
    assert row["verdict"].startswith("met: <= lease TTL + 1 s = 4 s (the slowest); orch-1's shards 0,2 led again by orch-2")
    assert "1 of their sagas were in flight at the kill" in row["verdict"] and "no other shard changed leader" in row["verdict"]
    slow = Tally()
    killed(slow, moves={0: ("orch-2", 2.0), 2: ("orch-2", 4.5)})
    row = {r["row"]: r for r in wan_table(slow, placement(), ttl_s=3)["rows"]}["shard failover (not in the spec)"]
    assert row["verdict"].startswith("missed: > lease TTL + 1 s = 4 s")


def test_summary_prints_the_table_or_leaves_it_to_the_live_display() -> None:
    """The plain summary carries the table's lines; the live display asks for the summary without them."""
    t = Tally()
    t.sagas = {"o": run("o", "order", 0.0, 0.9, steps=[("us", 1), ("us", 1), ("ap", 1)])}
    summary: dict[str, Any] = {
        "sagas": {"submitted": 1, "not_submitted": 0, "completed": 1, "compensated": 0, "designed_to_compensate": 0,
                  "failed": 0, "unfinished": 0, "lost": 0},
        "by_saga": {}, "latency_ms": {"p50": 1.0, "p99": 1.0, "max": 1.0, "count": 1},
        "throughput": {"sagas_per_s": None}, "steps_by_region": {}, "retried_runs": 0,
        "failovers": {"steps": 0, "sagas": 0, "routes": {}}, "region_killed": None, "orchestrator_killed": None,
        "processes": [], "verdict": "OK", "wan": wan_table(t, placement(), ttl_s=3),
    }
    plain = dict(summary_rows(summary))
    assert plain["region lab"].startswith("netns; round trips (ms) eu-us 80, eu-ap 200, us-ap 150")
    assert "spec table" in plain
    live = [label for label, _ in summary_rows(summary, wan_table=False)]
    assert "region lab" in live and "spec table" not in live
