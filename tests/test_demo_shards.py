"""The demo's shard view (no etcd, no processes): the board the orchestrators' events
fill in, the kill's moves, the summary's shard figures and verdict, and the displays."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from rich.console import Console
from rich.text import Text

from whizorch.cli import main
from whizorch.demo._display import LiveDisplay, PlainDisplay
from whizorch.demo._report import Kill, SagaRun, Tally, summarise, summary_rows
from whizorch.demo._saga_demo import DemoOptions
from whizorch.demo._shards import Move, ShardBoard, Upset, shard_list
from whizorch.demo._wan import inner_argv
from whizorch.saga import shard_of

NODES = ["orch-1", "orch-2", "orch-3"]
LAYOUT = {0: "orch-1", 3: "orch-1", 6: "orch-1", 1: "orch-2", 4: "orch-2", 7: "orch-2", 2: "orch-3", 5: "orch-3"}


def board(layout: dict[int, str] = LAYOUT, count: int = 8) -> ShardBoard:
    """A board whose shards are led as ``layout`` says (term 10 + shard)."""
    b = ShardBoard(count=count)
    for k, node in layout.items():
        b.on_leader(node, k, 10 + k, at=0.0, wall=None)
    return b


def test_a_stale_event_read_late_changes_nothing() -> None:
    """A leader event with a term no higher than the board's, or a follower event of a node that no longer leads the shard, is ignored; shards out of range too."""
    b = board()
    b.on_leader("orch-2", 0, 5, at=1.0, wall=None)
    assert b.leaders[0].node == "orch-1"
    b.on_leader("orch-2", 0, 50, at=1.0, wall=None)  # orch-1 handed over; its follower event comes after
    assert b.on_follower("orch-1", 0) is None and b.leaders[0].node == "orch-2"
    assert b.on_follower("orch-2", 0) is None and 0 not in b.leaders
    b.on_leader("orch-1", 8, 99, at=1.0, wall=None)
    assert 8 not in b.leaders and not b.all_led


def test_the_victim_leads_the_most_shards_shard_zero_among_equals() -> None:
    """pick_victim takes the orchestrator leading the most shards; among equals shard 0's leader; none when no one leads."""
    assert board().pick_victim(NODES) == "orch-1"
    b = board({0: "orch-3", 1: "orch-3", 2: "orch-1", 3: "orch-1", 4: "orch-2"}, count=5)
    assert b.pick_victim(NODES) == "orch-3"
    b = board({1: "orch-3", 2: "orch-3", 3: "orch-1", 4: "orch-1", 0: "orch-2"}, count=5)
    assert b.pick_victim(NODES) == "orch-1"  # equal shares, neither leads shard 0: the first of them
    assert ShardBoard(count=4).pick_victim(NODES) is None


def test_balanced_needs_every_shard_led_by_the_nodes_in_even_shares() -> None:
    """The shares have settled when every shard is led and each node leads count // n shards or one more."""
    assert board().balanced(NODES)
    assert not board({k: "orch-1" for k in range(8)}).balanced(NODES)
    assert not board({k: v for k, v in LAYOUT.items() if k != 5}).balanced(NODES)
    assert not board().balanced(["orch-1", "orch-2"])


def test_the_kill_turns_each_victim_shard_led_again_into_a_move_and_any_other_change_into_an_upset() -> None:
    """After the kill: a new leader of a victim's shard is a move timed from the kill (by the event's own clock when it has one); a buffered event of the victim is no move; another shard's new leader or lost leader is an upset."""
    b = board()
    assert b.on_kill("orch-1", at=100.0, wall=5000.0) == [0, 3, 6]
    assert b.led == 5 and not b.all_moved and b.waiting == [0, 3, 6]
    assert b.on_leader("orch-1", 0, 60, at=100.1, wall=None) is None  # read late from the dead one's pipe
    assert b.on_leader("orch-2", 0, 70, at=103.0, wall=5002.25) == Move(0, "orch-2", 70, 2.25)
    assert b.on_leader("orch-3", 3, 71, at=102.5, wall=None) == Move(3, "orch-3", 71, 2.5)
    assert b.on_leader("orch-2", 0, 72, at=104.0, wall=None) is None  # already moved: the first one counts
    assert b.on_leader("orch-2", 6, 73, at=103.2, wall=5003.0) == Move(6, "orch-2", 73, 3.0)
    assert b.all_moved and b.waiting == [] and b.failover_s() == (3.0, 2.5)
    assert b.upsets == []
    assert b.on_follower("orch-3", 2) == Upset(2, "orch-3", None)
    assert b.on_leader("orch-2", 5, 80, at=105.0, wall=None) == Upset(5, "orch-3", "orch-2")
    assert b.line(NODES, killed=["orch-1"]) == "orch-1 KILLED | orch-2 0*,1,4,5,6*,7 | orch-3 3*"
    assert b.moves_text() == "0 -> orch-2 2.25s, 3 -> orch-3 2.50s, 6 -> orch-2 3.00s"


def test_the_first_saga_finished_on_a_moved_shard_is_found_by_its_id() -> None:
    """on_finished notes the first saga, finished by a survivor after the kill, whose id hashes to one of the victim's shards."""
    b = board()
    ids = {shard_of(f"s-{i}", 8): f"s-{i}" for i in range(200)}
    assert b.on_finished(ids[0], "orch-2", at=1.0) is None  # before the kill
    b.on_kill("orch-1", at=100.0, wall=5000.0)
    assert b.on_finished(ids[1], "orch-2", at=101.0) is None  # a shard the victim did not lead
    assert b.on_finished(ids[3], "orch-1", at=101.0) is None  # the victim's own, read late
    first = b.on_finished(ids[6], "orch-3", at=102.5)
    assert first is not None and (first.saga_id, first.shard, first.node, first.after_s) == (ids[6], 6, "orch-3", 2.5)
    assert b.on_finished(ids[0], "orch-2", at=103.0) is None and b.first_saga == first


def test_shard_list_marks_and_abbreviates() -> None:
    """Shard lists are sorted, moved shards starred, a list past the limit counted."""
    assert shard_list([6, 0, 3], marked=[3]) == "0,3*,6"
    assert shard_list([]) == "-"
    assert shard_list(range(20), limit=16) == "0,1,2,3,4,...+15"


def killed_run(moves: dict[int, tuple[str, float]], *, ttl_s: int = 2) -> dict[str, Any]:
    """The summary of a run whose region failed over and whose orch-1 (shards 0,3,6) was
    killed at 20 s; ``moves``: shard -> (new leader, seconds after the kill)."""
    t = Tally()
    t.run_start = 0.0
    t.orchestrators = [("orch-1", 11, False), ("orch-2", 12, True), ("orch-3", 13, True)]
    t.shards = board()
    t.region_kill = Kill(what="region", target="us", pids=[1], names=["us-1"], at=10.0, wall=4990.0)
    t.region_failover_at = 12.0
    t.shards.on_kill("orch-1", at=20.0, wall=5000.0)
    t.orch_kill = Kill(what="orchestrator", target="orch-1", pids=[11], names=["orch-1"], at=20.0, wall=5000.0)
    for k, (node, after) in moves.items():
        t.shards.on_leader(node, k, 100 + k, at=20.0 + after, wall=5000.0 + after)
    for i in range(40):
        sid = f"order-{i:05d}"
        t.sagas[sid] = SagaRun(sid, "order", "completed", 18.0 + i * 0.1, submitted=True, status="completed",
                               finished_at=18.5 + i * 0.1, shard=shard_of(sid, 8))  # fmt: skip
    return summarise(t, options={"ttl_s": ttl_s})


def test_the_summary_carries_each_moved_shard_and_holds_the_slowest_against_the_ttl() -> None:
    """The JSON has the layout at the kill, each move (to whom, after how long), the slowest and the median, the shards that kept their leaders; the rows say so; a slow failover is 'missed' in the text, not in the verdict."""
    s = killed_run({0: ("orch-2", 2.2), 3: ("orch-3", 2.4), 6: ("orch-2", 2.3)})
    assert s["ok"], s["reasons"]
    assert s["orchestrator_killed"] == "orch-1" and s["orchestrator_killed_at_s"] == 20.0
    assert (s["shard_failover_s"], s["shard_failover_median_s"]) == (2.4, 2.3)
    sh = s["shards"]
    assert sh["at_kill"] == {"orch-1": [0, 3, 6], "orch-2": [1, 4, 7], "orch-3": [2, 5]}
    assert sh["now"] == {"orch-1": [], "orch-2": [0, 1, 4, 6, 7], "orch-3": [2, 3, 5]}
    assert [(m["shard"], m["to"], m["after_s"]) for m in sh["moved"]] == [(0, "orch-2", 2.2), (3, "orch-3", 2.4), (6, "orch-2", 2.3)]
    assert sh["victim_shards"] == [0, 3, 6] and sh["not_led_again"] == [] and sh["others_changed"] == []
    assert sh["kept_their_leader"] == [1, 2, 4, 5, 7] and sh["within_ttl_plus_1s"] is True
    assert sh["others_finished_during_failover"] is not None and sh["others_finished_during_failover"] > 0
    rows = summary_rows(s)
    at = [label for label, _ in rows].index("shards")
    text = [t for _, t in rows[at:at + 4]]
    assert text[0] == "8 over 3 orchestrators, at the kill: orch-1 0,3,6 | orch-2 1,4,7 | orch-3 2,5"
    assert text[1].startswith("orch-1 SIGKILLed at 20.0s leading 0,3,6; led again: 0 by orch-2 after 2.20 s, 3 by orch-3")
    assert text[2].startswith("failover slowest 2.40 s, median 2.30 s (met: <= lease TTL + 1 s = 3 s)")
    assert text[3].startswith("shards 1,2,4,5,7 kept their leaders")
    assert s["verdict"].startswith("OK: region and orchestrator failovers observed (3 shards led again, no other shard moved)")

    slow = killed_run({0: ("orch-2", 2.2), 3: ("orch-3", 9.0), 6: ("orch-2", 2.3)})
    assert slow["ok"] and slow["shards"]["within_ttl_plus_1s"] is False
    assert any("(missed: > lease TTL + 1 s = 3 s)" in t for _, t in summary_rows(slow))


def test_the_verdict_fails_when_a_victim_shard_is_not_led_again_or_another_shard_moved() -> None:
    """A shard of the victim with no new leader, or any other shard's leader change, is a reason the run failed."""
    s = killed_run({0: ("orch-2", 2.2), 6: ("orch-2", 2.3)})
    assert not s["ok"] and s["shards"]["not_led_again"] == [3]
    assert "shards 3 of orch-1 were not led again after it was killed" in s["reasons"]
    s = killed_run({0: ("orch-2", 2.2), 3: ("orch-3", 2.4), 6: ("orch-2", 2.3), 5: ("orch-2", 2.5)})
    assert not s["ok"] and s["shards"]["others_changed"] == [{"shard": 5, "from": "orch-3", "to": "orch-2"}]
    assert "shards 5 changed leader though their leader was not killed" in s["reasons"]


def test_both_displays_show_the_shards_in_80_columns() -> None:
    """The live panel, drawn 80 columns wide and 30 high, lists each orchestrator's shards, the killed one's and what became of them, and fits; the plain progress line counts the shards led."""
    t = Tally()
    t.run_start = time.monotonic() - 21.0
    t.phase = "running"
    t.orchestrators = [("orch-1", 11, False), ("orch-2", 12, True), ("orch-3", 13, True)]
    t.workers = {"eu": [("eu-1", 1, True)], "us": [("us-1", 2, False)], "ap": [("ap-1", 3, True)]}
    t.shards = board()
    t.shards.on_kill("orch-1", at=time.monotonic() - 1.0, wall=time.time() - 1.0)
    t.shards.on_leader("orch-2", 0, 90, at=time.monotonic(), wall=None)
    console = Console(width=80, height=30, record=True, file=io.StringIO())
    live = LiveDisplay(t, 30.0, title="whizorch demo: sagas in 3 regions; us and an orchestrator killed mid-run", console=console)
    live.events.extend(Text(f"[ 20.{i}s] an event") for i in range(10))
    console.print(live._render())
    lines = console.export_text().splitlines()
    assert len(lines) <= 30 and max(map(len, lines)) <= 80
    panel = "\n".join(lines)
    assert "shards 6/8 led" in panel and "orch-1  pid 11  KILLED, led 0,3,6" in panel
    assert "orch-2  pid 12  0*,1,4,7" in panel and "orch-1's shards: 0 -> orch-2" in panel and "3 waiting" in panel
    assert "killed mid-run" in panel and "[ 20.9s] an event" in panel  # the title whole, the newest event shown
    out = io.StringIO()
    PlainDisplay(t, 30.0, out=out).tick()
    assert "| shards led 6/8 |" in out.getvalue()


def test_demo_refuses_a_shard_count_out_of_range_and_hands_it_to_the_placed_demo() -> None:
    """whizorch demo --shards takes 1 to 64 (a clear error names the option otherwise); --wan passes it to the demo it places in the lab."""
    for bad in ("0", "65"):
        result = CliRunner().invoke(main, ["demo", "--shards", bad])
        assert result.exit_code == 2 and "Invalid value for '--shards'" in result.output and "1<=x<=64" in result.output
    argv = inner_argv(DemoOptions(shards=5, wan=True), Path("/tmp/placement.json"), 3)
    assert argv[argv.index("--shards") + 1] == "5" and argv[argv.index("--ttl") + 1] == "3"
