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


@pytest.mark.timeout(240)
def test_demo_kills_a_region_and_the_leader_and_every_saga_ends_as_designed(etcd_bin: str, tmp_path: Path) -> None:
    """On its own 3-member cluster the demo shows the region kill, failovers to the closest region, the leader kill and a new leader; it measures both failovers, loses no saga and leaves no process behind."""
    env = dict(os.environ, WHIZORCH_ETCD_BIN=str(etcd_bin))
    out, s = run_demo(["--duration", "15"], tmp_path / "summary.json", env=env)

    region_kill = re.search(r"^\[\s*\d+\.\ds\] KILL region us \(2 workers, SIGKILL", out, re.M)
    failover = re.search(r"^\[\s*\d+\.\ds\] failover saga \S+ step \d \(\w+\): us -> eu \(region down", out, re.M)
    leader_kill = re.search(r"^\[\s*\d+\.\ds\] KILL leader (orch-\d) \(pid \d+, SIGKILL\)", out, re.M)
    assert region_kill and failover and leader_kill, out
    new_leader = re.search(r"^\[\s*\d+\.\ds\] leader (orch-\d) \(term \d+, [\d.]+s after the kill\)", out[leader_kill.end():], re.M)
    assert new_leader and new_leader.group(1) != leader_kill.group(1), out
    assert region_kill.start() < failover.start() < leader_kill.start()
    assert "== summary ==" in out and re.search(r"^verdict\s+OK: ", out, re.M), out
    assert re.search(r"^\[\s*\d+\.\ds\] progress\s+\d+% \| submitted \d+", out, re.M)

    check_counts(s)
    assert s["ok"] and s["reasons"] == []
    assert s["etcd"] == "local"
    # a lease must expire first: not instant, but within a few TTLs
    assert 0.5 < s["region_failover_s"] < 10
    assert 0.5 < s["leader_failover_s"] < 10
    assert s["region_failover_first_saga_done_s"] is not None and s["region_failover_first_saga_done_s"] < 15
    assert s["leader_failover_first_saga_done_s"] is not None and s["leader_failover_first_saga_done_s"] < 15
    assert s["region_killed"] == "us" and s["leader_killed"] == leader_kill.group(1)
    assert s["new_leader"]["node"] == new_leader.group(1)
    # us -> eu (80 ms) is closer than us -> ap (150 ms), and eu has the PCI tag charge needs
    assert set(s["failovers"]["routes"]) == {"us->eu"} and s["failovers"]["steps"] > 0
    assert set(s["steps_by_region"]) == {"eu", "us", "ap"}

    killed = [pid for k in s["killed"] for pid in k["pids"]]
    assert len(killed) == 3  # two us workers, one leader
    for pid in killed:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    kinds = sorted(p["kind"] for p in s["processes"])
    assert kinds == ["etcd"] * 3 + ["orchestrator"] * 2 + ["worker"] * 4
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
    assert s["region_failover_s"] is not None and s["leader_failover_s"] is not None
    assert f"deleted every key under {s['namespace']}/" in out
    async with EtcdClient(etcd_endpoints, timeout_s=3.0) as client:
        res = await client.get(f"{s['namespace']}/", prefix=True)
        assert res.kvs == []
    assert all(gone(p, s["namespace"]) for p in s["processes"])
