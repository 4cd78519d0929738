"""The main job, ``whizorch demo``, end to end: real etcd, real role processes, real kills.

The demo runs as a subprocess (its stdout a pipe, so it prints plain lines) with
``--json-summary``; the tests read both. ``pytest -s`` shows its output.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from whizorch import EtcdClient

pytestmark = [pytest.mark.slow]

DEMO = [sys.executable, "-m", "whizorch", "demo"]


def run_demo(args: list[str], summary: Path, *, env: dict[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    """Run the demo to the end; its stdout and JSON summary (asserting it exited 0)."""
    proc = subprocess.run(
        [*DEMO, *args, "--json-summary", str(summary)],
        capture_output=True, text=True, timeout=220, env=env, check=False,
    )
    print(proc.stdout)
    assert proc.returncode == 0, f"the demo exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    data: dict[str, Any] = json.loads(summary.read_text())
    return proc.stdout, data


def gone(process: dict[str, Any], namespace: str) -> bool:
    """True when a process the demo started has exited (its pid may since belong to an
    unrelated process: a role's command line names the namespace, an etcd member's its
    endpoint)."""
    try:
        os.kill(process["pid"], 0)
    except ProcessLookupError:
        return True
    try:
        cmdline = Path(f"/proc/{process['pid']}/cmdline").read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return True
    return str(process.get("endpoint", namespace)) not in cmdline


def check_counts(s: dict[str, Any]) -> None:
    """Every saga reached its designed outcome; the counts add up; none lost."""
    n = s["sagas"]
    assert n["submitted"] > 0
    assert n["submitted"] == n["completed"] + n["compensated"] + n["failed"] + n["unfinished"]
    assert (n["unfinished"], n["lost"], n["failed"], n["unexpected"], n["not_submitted"]) == (0, 0, 0, 0, 0), n
    assert n["compensated"] == n["designed_to_compensate"] > 0
    assert n["completed"] > 0
    assert sum(row["submitted"] for row in s["by_saga"].values()) == n["submitted"]
    lat = s["latency_ms"]
    assert lat["count"] == n["completed"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]


def check_shards(s: dict[str, Any], out: str) -> None:
    """Only the killed orchestrator's shards moved, each to a survivor; the others kept
    their leaders; the summary's shard lines and figures say so."""
    sh, victim = s["shards"], s["orchestrator_killed"]
    assert sh["count"] == 8 and sh["orchestrators"] == ["orch-1", "orch-2", "orch-3"]
    assert sh["victim"] == victim and victim in sh["orchestrators"]
    # at the kill every shard had one leader, the shares even (3, 3, 2), the victim one of the most
    at_kill = sh["at_kill"]
    assert sorted(k for led in at_kill.values() for k in led) == list(range(8)), at_kill
    assert sorted(len(led) for led in at_kill.values()) == [2, 3, 3], at_kill
    assert sh["victim_shards"] == at_kill[victim] and len(at_kill[victim]) == 3
    # each of its shards led again by a survivor; no other shard changed leader
    moved = {m["shard"]: m for m in sh["moved"]}
    assert sorted(moved) == sh["victim_shards"] and sh["not_led_again"] == [], sh
    assert all(m["from"] == victim and m["to"] in set(at_kill) - {victim} and m["after_s"] > 0.5 for m in moved.values())
    assert sh["others_changed"] == [] and sh["kept_their_leader"] == sorted(set(range(8)) - set(moved))
    now = sh["now"]
    assert now[victim] == [] and sorted(k for led in now.values() for k in led) == list(range(8)), now
    for node in set(at_kill) - {victim}:
        assert set(at_kill[node]) <= set(now[node]) and set(now[node]) - set(at_kill[node]) <= set(moved), (node, sh)
    # the figures: the slowest and the median of the moves; the first saga on a moved shard
    took = sorted(m["after_s"] for m in moved.values())
    assert s["shard_failover_s"] == took[-1] and s["shard_failover_median_s"] == took[1]
    first = sh["first_saga_done"]
    assert first is not None and first["shard"] in moved and first["node"] != victim
    assert s["shard_failover_first_saga_done_s"] == round(first["after_s"], 3)
    assert sh["within_ttl_plus_1s"] in (True, False)  # "missed" on a slow day is the demo's to say, not a failure
    # the live lines: the kill, each move, the layout after; the summary's shard lines
    kill = re.search(rf"^\[\s*\d+\.\ds\] KILL orchestrator {victim} \(pid \d+, SIGKILL\); it leads shards ([\d,]+)$", out, re.M)
    assert kill and kill.group(1) == ",".join(map(str, sh["victim_shards"])), out
    after = out[kill.end():]
    for k, m in moved.items():
        assert re.search(rf"^\[\s*\d+\.\ds\] shard {k}: {m['to']} leads it \(term \d+\), [\d.]+s after the kill$", after, re.M), out
    assert re.search(rf"^\[\s*\d+\.\ds\] all 3 shards of {victim} led again: slowest [\d.]+s, median [\d.]+s \((met|missed): "
                     r"lease TTL 2s \+ 1 s\); the others kept their leaders$", after, re.M), out
    layout = " \\| ".join(f"{n} {','.join(map(str, led))}" for n, led in at_kill.items())
    assert re.search(r"^\[ setup\] shards: orch-\d [\d,]+ \| orch-\d [\d,]+ \| orch-\d [\d,]+$", out, re.M), out
    assert re.search(rf"^\[\s*\d+\.\ds\] shards: {layout}; the others wait out its lease \(2s\)$", out, re.M), out
    assert re.search(rf"^\[\s*\d+\.\ds\] shards: .*{victim} KILLED", after, re.M), out
    assert re.search(rf"^shards\s+8 over 3 orchestrators, at the kill: {layout}$", out, re.M), out
    assert re.search(rf"^\s+{victim} SIGKILLed at [\d.]+s leading [\d,]+; led again: \d+ by orch-\d after", out, re.M), out
    assert re.search(r"^\s+failover slowest [\d.]+ s, median [\d.]+ s \((met|missed): ", out, re.M), out
    assert re.search(r"^\s+shards [\d,]+ kept their leaders; \d+ sagas finished on them during the failover$", out, re.M), out


@pytest.mark.timeout(240)
def test_demo_kills_a_region_and_an_orchestrator_and_only_its_shards_move(etcd_bin: str, tmp_path: Path) -> None:
    """On its own 3-member cluster the demo shows the region kill, failovers to the closest region, the kill of the orchestrator leading the most of the 8 shards and each of those shards led again by another, no other shard moving; it measures both failovers, loses no saga and leaves no process behind."""
    env = dict(os.environ, WHIZORCH_ETCD_BIN=str(etcd_bin))
    out, s = run_demo(["--duration", "15"], tmp_path / "summary.json", env=env)

    region_kill = re.search(r"^\[\s*\d+\.\ds\] KILL region us \(2 workers, SIGKILL", out, re.M)
    failover = re.search(r"^\[\s*\d+\.\ds\] failover saga \S+ step \d \(\w+\): us -> eu \(region down", out, re.M)
    orch_kill = re.search(r"^\[\s*\d+\.\ds\] KILL orchestrator (orch-\d) \(pid \d+, SIGKILL\)", out, re.M)
    assert region_kill and failover and orch_kill, out
    assert region_kill.start() < failover.start() < orch_kill.start()
    assert "== summary ==" in out and re.search(r"^verdict\s+OK: ", out, re.M), out
    assert re.search(r"^\[\s*\d+\.\ds\] progress\s+\d+% \| submitted \d+.* \| shards led \d/8 \|", out, re.M), out

    check_counts(s)
    assert s["ok"] and s["reasons"] == []
    assert s["etcd"] == "local" and s["options"]["shards"] == 8
    # a lease must expire first: never at once (how long it takes is the demo's figure, not a test's)
    assert s["region_failover_s"] > 0.5 and s["shard_failover_s"] > 0.5
    assert s["region_failover_first_saga_done_s"] is not None
    assert s["region_killed"] == "us" and s["orchestrator_killed"] == orch_kill.group(1)
    check_shards(s, out)
    # us -> eu (80 ms) is closer than us -> ap (150 ms), and eu has the PCI tag charge needs
    assert set(s["failovers"]["routes"]) == {"us->eu"} and s["failovers"]["steps"] > 0
    assert set(s["steps_by_region"]) == {"eu", "us", "ap"}

    killed = [pid for k in s["killed"] for pid in k["pids"]]
    assert len(killed) == 3  # two us workers, one orchestrator
    for pid in killed:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    kinds = sorted(p["kind"] for p in s["processes"])
    assert kinds == ["etcd"] * 3 + ["orchestrator"] * 3 + ["worker"] * 4
    left = [p for p in s["processes"] if not gone(p, s["namespace"])]
    assert left == [], f"still running after the demo: {left}"


@pytest.mark.timeout(240)
async def test_demo_on_a_given_cluster_leaves_its_namespace_empty(etcd_endpoints: list[str], tmp_path: Path) -> None:
    """With --etcd the demo starts no etcd, runs its failovers on the given cluster in a fresh namespace, and deletes that namespace's keys."""
    out, s = await asyncio.to_thread(
        run_demo, ["--etcd", ",".join(etcd_endpoints), "--duration", "9"], tmp_path / "summary.json"
    )
    check_counts(s)
    assert s["ok"], s["reasons"]
    assert s["etcd"] == "external" and s["endpoints"] == list(etcd_endpoints)
    assert re.fullmatch(r"demo-[\w-]+", s["namespace"])
    assert "etcd" not in {p["kind"] for p in s["processes"]}
    assert s["region_failover_s"] is not None and s["shard_failover_s"] is not None
    check_shards(s, out)
    assert f"deleted every key under {s['namespace']}/" in out
    async with EtcdClient(etcd_endpoints, timeout_s=3.0) as client:
        res = await client.get(f"{s['namespace']}/", prefix=True)
        assert res.kvs == []
    assert all(gone(p, s["namespace"]) for p in s["processes"])
