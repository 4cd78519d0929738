"""``whizorch demo --wan`` end to end: the saga demo on a region lab, each role placed in
its region, and the spec's table in its summary.

It needs the lab's network namespaces (root and ``ip netns``): marked ``netns``, so it is
skipped with the reason elsewhere. ``pytest -s`` shows the demo's output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from whizorch.testing._lab_host import list_namespaces

pytestmark = [pytest.mark.slow, pytest.mark.netns]


def rows_by_name(wan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rows of the spec's table in a --wan summary, by name."""
    return {row["row"]: row for row in wan["rows"]}


@pytest.mark.timeout(150)
def test_demo_wan_runs_the_demo_with_regions_apart_and_prints_the_spec_table(etcd_bin: str, tmp_path: Path) -> None:
    """demo --wan --duration 12 exits 0: roles placed in their regions, etcd's leader moved to eu, the region failover
    and the killed orchestrator's shards (only those) led again, every saga as designed, the spec's table with floors
    from the matrix and the shard failover row, and nothing left behind."""
    env = dict(os.environ, WHIZORCH_ETCD_BIN=str(etcd_bin))
    summary_path = tmp_path / "summary.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "whizorch", "demo", "--wan", "--duration", "12", "--json-summary", str(summary_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    out, err = proc.communicate(timeout=140)
    print(out)
    assert proc.returncode == 0, f"the demo exited {proc.returncode}:\n{out}\n{err[-3000:]}"

    assert re.search(r"^\[   lab\] mode netns: each region is a network namespace", out, re.M), out
    assert re.search(r"^\[   lab\] etcd [\d.]+ up; its Raft leader is in eu", out, re.M), out
    assert re.search(r"^\[ setup\] orchestrators in eu \(beside etcd's leader\): orch-1 .*; 8 shards", out, re.M), out
    assert re.search(r"^\[\s*\d+\.\ds\] KILL region us \(2 workers, SIGKILL", out, re.M), out
    kill = re.search(r"^\[\s*\d+\.\ds\] KILL orchestrator (orch-\d) \(pid \d+, SIGKILL\); it leads shards", out, re.M)
    assert kill, out
    assert re.search(r"^\[\s*\d+\.\ds\] all \d shards of orch-\d led again: .*; the others kept their leaders$", out, re.M), out
    assert re.search(r"^spec table\s+this run next to the spec", out, re.M), out
    assert re.search(r"^verdict\s+OK: ", out, re.M), out
    assert out.rstrip().splitlines()[-1].startswith("[   lab] closed:"), out

    s = json.loads(summary_path.read_text())
    assert s["ok"] and s["reasons"] == []
    assert s["etcd"] == "region lab (netns)"
    n = s["sagas"]
    assert n["submitted"] > 0 and (n["unfinished"], n["lost"], n["failed"], n["unexpected"]) == (0, 0, 0, 0), n
    assert set(s["steps_by_region"]) == {"eu", "us", "ap"}
    assert set(s["failovers"]["routes"]) == {"us->eu"}
    assert all(p["gone"] for p in s["processes"]), s["processes"]
    sh = s["shards"]
    assert s["orchestrator_killed"] == sh["victim"] == kill.group(1) and sh["count"] == 8
    assert sorted(m["shard"] for m in sh["moved"]) == sh["victim_shards"] == sh["at_kill"][sh["victim"]], sh
    assert sh["victim_shards"] and sh["not_led_again"] == [] and sh["others_changed"] == [], sh
    assert all(m["to"] != sh["victim"] for m in sh["moved"]), sh

    w = s["wan"]
    assert (w["mode"], w["etcd_leader"], w["quorum_rtt_ms"]) == ("netns", "eu", 80.0)
    assert w["lease_ttl_s"] == 3  # etcd raises a 2 s TTL to 1.5 x its 2 s election timeout
    rows = rows_by_name(w)
    for name, floor in (("saga coordination: order (us, us, ap)", 680.0), ("saga coordination: transfer (eu, us, ap)", 600.0)):
        row = rows[name]
        assert row["spec"] == "< 100 ms, 85 p99" and row["floor_ms"] == floor
        assert row["n"] > 0, row
        # regions really are apart: no saga beats the matrix's floor
        assert floor <= row["p50_ms"] <= row["p99_ms"], row
        assert row["ratio"] == round(row["p99_ms"] / floor, 2)
    region, shard = rows["regional failover (us)"], rows["shard failover (not in the spec)"]
    assert region["n"] == 1 and shard["n"] == len(sh["victim_shards"]), (region, shard)
    for row in (region, shard):
        # a lease must expire first (3 s): never at once; how long it takes is the row's verdict, met or missed
        assert row["floor_ms"] == 3000.0 and row["p99_ms"] > 1000, row
        assert re.match(r"(met: <=|missed: >) lease TTL \+ 1 s = 4 s", row["verdict"]), row
    assert abs(shard["p99_ms"] - s["shard_failover_s"] * 1000) < 1 and shard["p50_ms"] <= shard["p99_ms"], shard
    assert f"{sh['victim']}'s shards" in shard["verdict"] and "no other shard changed leader" in shard["verdict"], shard
    assert rows["regional failover (us)"]["spec"] == "< 5 s, 3.2 s"
    for name in ("consensus round trip", "global lock", "state replication lag", "split-brain detection"):
        assert "see bench/bench_wan.py" in rows[name]["verdict"], rows[name]
    assert "floor from eu 80, us 160, ap 280 ms" in rows["consensus round trip"]["verdict"]
    assert rows["split-brain detection"]["spec"] == "< 1 s, 750 ms"

    left = [name for name in list_namespaces() if name.startswith(f"wz-{proc.pid}-")]
    assert left == [], f"namespaces left behind: {left}"
