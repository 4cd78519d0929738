"""The pure views behind ``whizorch status`` and ``whizorch sagas`` (hand-built records, no etcd)."""

from __future__ import annotations

import io
import json
from typing import Any

import attrs
import pytest
from rich.console import Console, RenderableType

from whizorch.cli._inspect import PIPE_WIDTH, console, render_list, render_show, render_status
from whizorch.cli._views import (
    Pending,
    SagaDetails,
    count_sagas,
    failover_rows,
    fmt_duration,
    fmt_route,
    fmt_time,
    leader_summary,
    list_rows,
    quarantine_notes,
    record_document,
    step_rows,
    summarize_cluster,
    summarize_definitions,
    summarize_regions,
    summarize_status,
    tasks_by_region,
    timeline_rows,
    workers_by_region,
)
from whizorch.etcd import KeyValue, Member, Status, version_warning
from whizorch.saga import SagaRecord, StepState
from whizorch.saga._keys import Keys
from whizorch.saga._model import OPTIONAL_STEP_FIELDS

T0 = 1_700_000_000.0


def compensated_with_failover() -> SagaRecord:
    """a done in eu then compensated; b failed twice in eu, moved to us, failed there too."""
    return SagaRecord(
        id="t-1", saga="trip", txid=42, status="compensated", created=T0, updated=T0 + 3.0, finished=T0 + 3.0,
        step=1, error="step 'b' failed: boom", leader_term=7,
        steps=[
            StepState(
                name="a", state="compensated", region="eu", run=1, comp_run=2, comp_failures=1,
                started=T0, ended=T0 + 0.5, regions=["eu"],
            ),
            StepState(
                name="b", state="failed", region="us", run=3, failures=3, started=T0 + 0.5, ended=T0 + 2.5,
                error="RuntimeError: boom", regions=["eu", "eu", "us"],
            ),
        ],
        failovers=[{"step": 1, "from": "eu", "to": "us", "reason": "region down", "at": T0 + 1.2}],
        history=[  # out of order on purpose; the first entry rounded just below `created`
            {"at": T0 + 0.5, "event": "step_done", "step": 0, "region": "eu", "attempt": 1},
            {"at": T0 - 0.00004, "event": "adopted", "txid": 42},
            {"at": T0 + 1.2, "event": "failover", "step": 1, "from": "eu", "to": "us", "reason": "region down"},
            {"at": T0 + 3.0, "event": "compensated_all"},
        ],
    )  # fmt: skip


def running(saga_id: str = "r-1", txid: int = 50, saga: str = "geo") -> SagaRecord:
    """A saga whose first step has run for 2 s (at T0 + 2)."""
    return SagaRecord(
        id=saga_id, saga=saga, txid=txid, status="running", created=T0, updated=T0,
        steps=[StepState(name="x", state="dispatched", region="eu", run=1, started=T0, regions=["eu"])],
    )  # fmt: skip


def kv(key: str, value: str, create_revision: int, lease: int) -> KeyValue:
    return KeyValue(key.encode(), value.encode(), create_revision, create_revision, 1, lease)


def text(renderable: RenderableType) -> str:
    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None).print(renderable)
    return buf.getvalue()


# -- formatting ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "-"), (-1.0, "0.00s"), (0.25, "0.25s"), (12.34, "12.3s"), (245.0, "4m05s"), (7380.0, "2h03m"),
     (273600.0, "3d04h")],
)  # fmt: skip
def test_fmt_duration(seconds: float | None, shown: str) -> None:
    """Durations read at a glance: seconds with decimals, then m/s, h/m, d/h."""
    assert fmt_duration(seconds) == shown


def test_fmt_route_collapses_retries_and_draws_failovers() -> None:
    """A step's regions in order, repeats from retries collapsed: ``eu -> us``."""
    assert fmt_route(["eu", "eu", "us", "us", "eu"]) == "eu -> us -> eu"
    assert fmt_route(["eu"]) == "eu"
    assert fmt_route([]) == "-"


def test_fmt_time_is_utc_iso() -> None:
    """Wall-clock times print as ISO 8601 UTC with milliseconds."""
    assert fmt_time(0.5) == "1970-01-01T00:00:00.500Z"
    assert fmt_time(None) == "-"


# -- status ------------------------------------------------------------------------------


def test_leader_is_the_candidate_with_the_lowest_create_revision() -> None:
    """The leader's node id is its key's value, its term the key's create revision."""
    cands = [kv("ns/leader/2b", "node-b", 20, 0x2B), kv("ns/leader/1a", "node-a", 11, 0x1A)]
    assert leader_summary(cands) == {"node": "node-a", "term": 11, "lease": "1a", "key": "ns/leader/1a"}
    assert leader_summary([]) is None


def test_regions_health_load_compliance_cost_and_tasks() -> None:
    """Capacity-weighted load, shared compliance, lowest cost; tasks and no worker: down."""
    workers: dict[str, list[dict[str, Any]]] = {
        "eu": [
            {"worker": "w2", "concurrency": 3, "load": 1.0, "compliance": ["gdpr", "pci"], "cost": 2.0},
            {"worker": "w1", "concurrency": 1, "load": 0.0, "compliance": ["gdpr"], "cost": 1.5},
        ],
        "us": [{"worker": "w3"}],
    }
    regions = summarize_regions(workers, {"eu": 2, "ap": 1})
    assert [r["name"] for r in regions] == ["ap", "eu", "us"]
    ap, eu, us = regions
    assert eu == {
        "name": "eu", "healthy": True, "workers": 2, "worker_ids": ["w1", "w2"], "capacity": 4, "load": 0.75,
        "compliance": ["gdpr"], "cost": 1.5, "tasks": 2,
    }  # fmt: skip
    assert (us["healthy"], us["capacity"], us["load"], us["compliance"], us["cost"]) == (True, 1, 0.0, [], 0.0)
    assert (ap["healthy"], ap["workers"], ap["cost"], ap["tasks"]) == (False, 0, None, 1)


def test_workers_and_tasks_by_region_from_keys() -> None:
    """Registrations group by region; those the leader's router quarantines (not JSON,
    bad fields, keys that are not UTF-8) are skipped as it skips them; tasks count."""
    keys = Keys("ns")
    regs = [kv("ns/region/eu/1a", '{"worker": "w1"}', 5, 0x1A), kv("ns/region/eu/2b", "not json", 6, 0x2B),
            kv("ns/region/eu/4d", '{"worker": "w4", "concurrency": "lots"}', 8, 0x4D),
            kv("ns/region/us/3c", '{"worker": "w3"}', 7, 0x3C)]  # fmt: skip
    bad_key = attrs.evolve(regs[0], key=b"ns/region/\xff/1a")
    assert workers_by_region([*regs, bad_key], keys) == {"eu": [{"worker": "w1"}], "us": [{"worker": "w3"}]}
    tasks = [kv("ns/task/eu/s1/0", "", 8, 0), kv("ns/task/eu/s2/1", "", 9, 0), kv("ns/task/ap/s3/0", "", 10, 0)]
    assert tasks_by_region([*tasks, attrs.evolve(tasks[0], key=b"ns/task/\xfe")], keys) == {"eu": 2, "ap": 1}


def test_count_sagas_by_status() -> None:
    """In-flight sagas by running/compensating, finished ones by final status, pending apart."""
    records = [running(), running("r-2"), compensated_with_failover()]
    records[1].status = "compensating"
    assert count_sagas(records, pending=2) == {
        "pending": 2, "in_flight": {"running": 1, "compensating": 1},
        "final": {"completed": 0, "compensated": 1, "failed": 0}, "total": 5, "exact": True, "scanned": 3,
    }  # fmt: skip


def test_count_sagas_of_the_first_records_of_many_says_it_is_not_exact() -> None:
    """Statuses of 3 records read out of 1000: counted as read, total from the count, exact False."""
    records = [running(), running("r-2"), compensated_with_failover()]
    counted = count_sagas(records, pending=4, total_records=1000)
    assert (counted["in_flight"]["running"], counted["final"]["compensated"]) == (2, 1)
    assert (counted["total"], counted["exact"], counted["scanned"]) == (1004, False, 3)
    assert count_sagas(records, total_records=3)["exact"] is True


def cluster() -> tuple[list[Member], Status]:
    members = [
        Member(0xA1, "etcd0", ("http://h:1",), ("http://h:2379",), False),
        Member(0xB2, "etcd1", ("http://h:3",), ("http://h:2479",), False),
        Member(0xC3, "etcd2", ("http://h:5",), (), True),
    ]
    status = Status("h:2379", "3.5.1", 4096, 0xB2, 0xA1, 99, 5, 80, ())
    return members, status


def test_version_warning_names_only_the_etcd_versions_known_to_diverge() -> None:
    """3.5.0-3.5.2 (any spelling Status uses) get a warning naming the bug and the fix;
    3.5.3 on, 3.4 and unparsable strings get none."""
    for v in ("3.5.0", "3.5.1", "v3.5.2", "3.5.1-dev"):
        w = version_warning(v)
        assert w is not None and "etcd-io/etcd#13766" in w and "3.5.3 or newer" in w
    for v in ("3.5.3", "3.5.17", "3.4.23", "3.6.0", "", "unknown"):
        assert version_warning(v) is None
    members, status = cluster()
    fine = Status("h:2379", "3.5.17", 4096, 0xB2, 0xA1, 99, 5, 80, ())
    assert summarize_cluster(members, fine, {0xA1: fine})["warnings"] == []
    # one member still on 3.5.1 is enough to warn
    assert len(summarize_cluster(members, fine, {0xA1: fine, 0xB2: status})["warnings"]) == 1


def test_cluster_names_the_raft_leader_and_each_members_reach() -> None:
    """The answering member's view (leader, term, revision, db size) and each member's own status."""
    members, status = cluster()
    own: dict[int, Status | str] = {0xA1: status, 0xB2: "connection refused"}
    doc = summarize_cluster(members, status, own)
    assert (doc["leader"], doc["leader_id"], doc["raft_term"], doc["revision"], doc["db_size"]) == (
        "etcd1", "b2", 5, 80, 4096,
    )  # fmt: skip
    rows = {m["name"]: m for m in doc["members"]}
    assert rows["etcd0"]["reachable"] is True and rows["etcd0"]["db_size"] == 4096
    assert rows["etcd1"]["is_leader"] and rows["etcd1"]["reachable"] is False
    assert rows["etcd1"]["error"] == "connection refused"
    assert rows["etcd2"]["is_learner"] and rows["etcd2"]["reachable"] is None
    json.dumps(doc)


def test_status_document_and_its_tables() -> None:
    """The status document has its documented keys; the tables show leader, regions and members."""
    members, status = cluster()
    doc = summarize_status(
        namespace="ns", revision=80, candidates=[kv("ns/leader/1a", "node-a", 11, 0x1A)],
        workers={"eu": [{"worker": "w1", "compliance": ["gdpr"]}]}, tasks={"us": 1},
        records=[running()], pending=0, cluster=summarize_cluster(members, status),
        quarantined=quarantine_notes([kv("ns/quarantine/ab", json.dumps(
            {"kind": "submit", "key": "ns/submit/\\xff", "reason": "key is not UTF-8", "revision": 7, "at": 1.0}), 8, 0)]),
    )  # fmt: skip
    assert list(doc) == [
        "namespace", "revision", "leader", "candidates", "shards", "orchestrators", "regions", "sagas", "definitions",
        "quarantined", "latency", "etcd",
    ]
    assert "warnings" in doc["etcd"]
    assert doc["quarantined"] == [
        {"kind": "submit", "key": "ns/submit/\\xff", "reason": "key is not UTF-8", "revision": 7, "at": 1.0}
    ]
    out = text(render_status(doc))
    assert "quarantined input (1)" in out and "key is not UTF-8" in out
    assert "leader node-a  term 11  lease 1a" in out
    assert "eu" in out and "healthy" in out and "gdpr" in out
    assert "us" in out and "down" in out
    assert "etcd1" in out and "raft term 5" in out
    # the fixture's etcd is 3.5.1: the status says it is unfit for production, and why
    assert doc["etcd"]["warnings"] == [version_warning("3.5.1")]
    assert "warning: etcd 3.5.1 can diverge" in " ".join(out.split())

    doc["leader"], doc["candidates"] = None, 0
    assert "no leader" in text(render_status(doc))


def test_definitions_show_what_is_in_flight_and_who_can_run_it() -> None:
    """Per saga type and version: sagas in flight, steps waiting for a worker, the live
    workers that can run it by region (draining ones not), and a warning when sagas are
    in flight on a version no live worker has; a worker with no list runs any version."""
    v1 = running("a", 10)
    v1.saga, v1.version = "order", "1"
    v1.steps[-1].waiting_region, v1.steps[-1].waiting_for = True, "worker"
    v2 = running("b", 11)
    v2.saga, v2.version = "order", "2"
    workers = {
        "eu": [{"worker": "w1", "sagas": {"order": ["2"]}}, {"worker": "w2", "sagas": {"order": ["1"]}, "draining": True}],
        "us": [{"worker": "w3", "sagas": {"order": ["2"], "trip": ["f0"]}}],
    }
    rows = summarize_definitions([v1, v2, compensated_with_failover()], workers)
    assert [(r["saga"], r["version"], r["in_flight"], r["waiting"], r["workers"]) for r in rows] == [
        ("order", "1", 1, 1, {}), ("order", "2", 1, 0, {"eu": 1, "us": 1}), ("trip", "f0", 0, 0, {"us": 1}),
    ]
    assert rows[0]["warning"] == (
        "1 saga(s) of order version 1 in flight and no live worker can run it: deploy a worker whose App holds it"
    )
    assert rows[1]["warning"] is None
    workers["ap"] = [{"worker": "old-whizorch"}]
    assert summarize_definitions([v1], workers)[0]["workers"] == {"ap": 1}
    doc = summarize_status(
        namespace="ns", revision=80, candidates=[], workers=workers, tasks={}, records=[v1, v2], pending=0,
        cluster=summarize_cluster(*cluster()),
    )
    out = " ".join(text(render_status(doc)).split())
    assert "saga definitions" in out and "warning: 1 saga(s) of order version 1" not in out  # ap runs anything
    del workers["ap"]
    doc["definitions"] = summarize_definitions([v1, v2], workers)
    assert "warning: 1 saga(s) of order version 1 in flight" in " ".join(text(render_status(doc)).split())


# -- sagas list ----------------------------------------------------------------------------


def test_list_rows_newest_first_filtered_with_pending() -> None:
    """Rows by txid descending, filtered by status and type; pending submissions are rows too."""
    records = [running("old", 10), compensated_with_failover(), running("new", 90, saga="trip")]
    pending = [Pending(saga_id="p", saga="trip", txid=95, submitted=T0 + 1.0)]
    rows = list_rows(records, pending, now=T0 + 10.0)
    assert [(r["id"], r["status"]) for r in rows] == [
        ("p", "pending"), ("new", "running"), ("t-1", "compensated"), ("old", "running"),
    ]  # fmt: skip
    t1 = rows[2]
    assert (t1["step"], t1["regions"], t1["failovers"], t1["age_s"], t1["duration_s"]) == ("b", ["eu", "us"], 1, 10.0, 3.0)
    assert (rows[0]["age_s"], rows[0]["duration_s"]) == (9.0, None)
    assert [r["id"] for r in list_rows(records, pending, now=T0, status="running")] == ["new", "old"]
    assert [r["id"] for r in list_rows(records, pending, now=T0, saga_type="trip")] == ["p", "new", "t-1"]
    out = text(render_list(rows))
    assert "t-1" in out and "compensated" in out and "eu us" in out and "step 'b' failed: boom" in out
    by_id = list_rows(records, pending, now=T0, newest_first=False)
    assert [r["id"] for r in by_id] == ["new", "old", "p", "t-1"]


def test_list_footer_gives_the_scan_and_the_next_cursor() -> None:
    """The page's last line: rows shown, records scanned, and --after CURSOR or the end."""
    rows = list_rows([running("a-1", 10)], now=T0)
    assert "next page: --after a-1" in text(render_list(rows, scanned=1234, next_after="a-1"))
    assert "1,234 scanned" in text(render_list(rows, scanned=1234, next_after="a-1"))
    assert "end of the list" in text(render_list(rows, scanned=1, next_after=None))


# -- sagas show ----------------------------------------------------------------------------


def test_step_rows_route_runs_durations_and_compensation() -> None:
    """Each step's state, route with failover arrows, runs, failures, duration and compensation."""
    a, b = step_rows(compensated_with_failover())
    assert (a["route"], a["runs"], a["duration_s"], a["compensation"]) == ("eu", 1, 0.5, "compensated (2 runs, 1 failed)")
    assert (b["route"], b["runs"], b["failures"], b["duration_s"]) == ("eu -> us", 3, 3, 2.0)
    assert (b["compensation"], b["error"], b["running_s"]) == ("-", "RuntimeError: boom", None)
    (x,) = step_rows(running(), now=T0 + 2.0)
    assert (x["duration_s"], x["running_s"]) == (None, 2.0)


def test_timeline_is_time_ordered_relative_to_creation() -> None:
    """History entries sorted by time, in seconds since creation (never negative), with step names."""
    rows = timeline_rows(compensated_with_failover())
    assert [(r["t"], r["event"], r["step"]) for r in rows] == [
        (0.0, "adopted", None), (0.5, "step_done", "a"), (1.2, "failover", "b"), (3.0, "compensated_all", None),
    ]  # fmt: skip
    assert rows[1]["detail"] == "region=eu attempt=1"
    assert failover_rows(compensated_with_failover()) == [
        {"t": 1.2, "step": "b", "from": "eu", "to": "us", "reason": "region down"}
    ]


def test_record_document_adds_durations() -> None:
    """--json of show is the stored record plus duration_s and compensation on the saga's steps, every step field present."""
    rec = compensated_with_failover()
    doc = record_document(rec)
    assert [s["duration_s"] for s in doc["steps"]] == [0.5, 2.0]
    assert [s["compensation"] for s in doc["steps"]] == ["compensated", None]
    assert doc["duration_s"] == 3.0
    assert "input" not in doc and "outputs" not in doc  # only with details
    doc.pop("duration_s")
    for s in doc["steps"]:
        s.pop("duration_s")
        s.pop("compensation")
        for name in OPTIONAL_STEP_FIELDS:
            assert s.pop(name) is None
    stored = rec.to_dict()
    assert all(name not in step for step in stored["steps"] for name in OPTIONAL_STEP_FIELDS)
    assert doc == stored
    assert record_document(running())["duration_s"] is None
    json.dumps(record_document(rec))


def nothing_to_undo() -> SagaRecord:
    """Step a (no compensation) done, then b failed with a traceback: the saga compensated."""
    rec = compensated_with_failover()
    rec.steps[0] = StepState(name="a", state="compensated", region="eu", run=1, started=T0, ended=T0 + 0.5, regions=["eu"])
    rec.steps[1].error, rec.steps[1].error_type = "KeyError: 'sku'", "KeyError"
    rec.steps[1].traceback = 'Traceback (most recent call last):\n  File "shop.py", line 9, in b\nKeyError: \'sku\''
    return rec


def test_a_step_without_compensation_is_not_shown_compensated() -> None:
    """A step the saga "compensated" with no compensation run reads as not compensated, in rows, JSON and the table."""
    rec = nothing_to_undo()
    a, _ = step_rows(rec)
    assert a["state"] == "done, not compensated" and a["compensation"].startswith("none: the step has no compensation")
    assert record_document(rec)["steps"][0]["compensation"] == "none"
    out = text(render_show(rec, T0 + 5.0))
    assert "done, not compensated" in out and "compensated (" not in out


def test_show_prints_input_outputs_and_the_traceback() -> None:
    """show prints the saga's input, each completed step's output and a failed step's traceback; --json carries them."""
    rec = nothing_to_undo()
    details = SagaDetails(input={"sku": None, "qty": 2}, has_input=True, outputs={"a": {"reserved": "r-1"}})
    out = text(render_show(rec, T0 + 5.0, details))
    assert 'input: {"sku": null, "qty": 2}' in out
    assert '{"reserved": "r-1"}' in out
    assert "traceback of step 'b' (run, its last failure):" in out and 'File "shop.py", line 9, in b' in out
    doc = record_document(rec, details)
    assert doc["input"] == {"sku": None, "qty": 2} and doc["outputs"] == {"a": {"reserved": "r-1"}}
    assert doc["steps"][1]["error_type"] == "KeyError" and "shop.py" in doc["steps"][1]["traceback"]
    gone = text(render_show(rec, T0 + 5.0, SagaDetails(has_input=False)))
    assert "input: - (its submission is gone)" in gone
    assert record_document(rec, SagaDetails())["input"] is None


def test_show_cuts_a_long_input_and_says_so() -> None:
    """A large input is cut in the table view, naming its size and --json."""
    out = text(render_show(running(), T0 + 1.0, SagaDetails(input="x" * 5000, has_input=True)))
    assert "5,002 characters; --json shows all" in out


def test_record_fields_added_later_are_written_only_when_set() -> None:
    """A step's error_type/traceback are in the stored JSON only when set, and a record without them decodes."""
    rec = nothing_to_undo()
    again = SagaRecord.from_json(rec.to_json())
    assert again.steps[1].traceback == rec.steps[1].traceback and again.steps[0].traceback is None
    assert b"comp_traceback" not in rec.to_json() and b'"traceback"' in rec.to_json()


def test_show_renders_steps_failovers_and_history_literally() -> None:
    """show draws steps with arrows, failovers and history; markup-like user text prints as is."""
    rec = compensated_with_failover()
    rec.error = "[bold]not markup[/bold]"
    out = text(render_show(rec, T0 + 5.0))
    assert "saga t-1" in out and "compensated" in out and "leader term 7" in out
    assert "eu -> us" in out and "compensated (2 runs, 1 failed)" in out and "RuntimeError: boom" in out
    assert "failovers" in out and "region down" in out
    assert "compensated_all" in out and "3.000" in out
    assert "[bold]not markup[/bold]" in out
    assert "no failovers" in text(render_show(running(), T0 + 1.0))


def test_piped_tables_are_as_wide_as_their_content(monkeypatch: pytest.MonkeyPatch) -> None:
    """With stdout not a terminal (a pipe, a file), the console is not squeezed to 80 columns: no header or cell is cut."""
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.delenv("COLUMNS", raising=False)
    c = console()
    assert not c.is_terminal and c.width == PIPE_WIDTH
    rows = list_rows([compensated_with_failover(), running()], now=T0 + 5.0)
    c.print(render_list(rows))
    lines = out.getvalue().splitlines()
    header = next(line for line in lines if "status" in line)
    for col in ("id", "type", "status", "txid", "step", "regions", "failovers", "age", "duration", "error"):
        assert f" {col} " in header, header
    assert any("compensated" in line and "step 'b' failed: boom" in line for line in lines)
    assert max(len(line) for line in lines) > 80
