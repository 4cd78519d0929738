"""``whizorch status`` and ``whizorch sagas list|show`` as child processes on real etcd.

One deployment per module, on the module's shared cluster in a namespace of its own:
an orchestrator and four workers in three regions run in this event loop; five sagas
(two completed, one compensated, one failed, one held while running). The tests run
``python -m whizorch ...`` as a child process (the event loop keeps the roles alive
meanwhile) and read its JSON and its tables.

What a slow day may change is read, not assumed: a worker whose keepalives starve
under load loses its lease, and its step fails over (the records say so, and the views
are checked against the records); the live views (status) are read again until they
show the settled deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import pytest_asyncio
import saga_apps as apps

from whizorch import EtcdClient
from whizorch.saga import Orchestrator, SagaClient, SagaRecord, Worker
from whizorch.testing import eventually_async

# etcd34: member status fields differ between 3.4 and 3.5; the views must read both
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.etcd34]

TTL = 15
"""Lease TTL (s) of the roles: nothing here is meant to fail over, so a long one (a
keepalive starved for 12 s under load is what it takes to lose a lease)."""

RESULT_S = 30.0

WORKERS: dict[str, list[dict[str, Any]]] = {
    "eu": [{"compliance": ["gdpr", "pci"], "cost": 2.0}, {"compliance": ["gdpr"], "cost": 1.5}],
    "us": [{"compliance": ["sox"], "cost": 1.0}],
    "ap": [{"cost": 0.5}],
}


@attrs.frozen
class Deployment:
    """Where the module's roles run, and the orchestrator (its node id and term)."""

    endpoints: list[str]
    ns: str
    orchestrator: Orchestrator
    records: dict[str, SagaRecord]
    """The final sagas' records as etcd has them (they change no more)."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment(etcd_endpoints: list[str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    """The roles running, the five sagas in their states; the namespace deleted afterwards."""
    ns = f"test/{uuid.uuid4().hex[:12]}"
    directory = tmp_path_factory.mktemp("cli")
    async with EtcdClient(etcd_endpoints, timeout_s=3.0, retry_deadline_s=5.0) as client:
        try:
            async with contextlib.AsyncExitStack() as stack:
                orch = await stack.enter_async_context(
                    Orchestrator(client, apps.leader_app, namespace=ns, node_id="cli-orch", lease_ttl_s=TTL)
                )
                for region, specs in WORKERS.items():
                    for i, spec in enumerate(specs):
                        await stack.enter_async_context(
                            Worker(
                                client, apps.app, region=region, namespace=ns, worker_id=f"{region}-{i}",
                                lease_ttl_s=TTL, drain_timeout_s=2.0, **spec,
                            )
                        )  # fmt: skip
                await orch.wait_leader(10)
                sagas = await stack.enter_async_context(SagaClient(client, namespace=ns))
                results = await asyncio.gather(
                    *(
                        sagas.execute(saga, plan, saga_id=sid, timeout_s=RESULT_S, raise_on_failure=False)
                        for sid, saga, plan in (
                            ("ok-1", apps.trip, {}),
                            ("ok-2", apps.trip, {}),
                            ("comp", apps.geo, {"fail": {"d": 99}}),
                            ("dead", apps.trip, {"fail": {"d": 99}, "comp_fail": {"c": 99}}),
                        )
                    )
                )
                assert [r.status for r in results] == ["completed", "completed", "compensated", "failed"]
                records = {r.saga_id: r.record for r in results}
                await sagas.submit(apps.trip, {"dir": str(directory), "hold": {"b": 1}}, saga_id="held")
                await eventually_async(
                    lambda: any(r["phase"] == "held" for r in apps.read_runs(directory)), message="saga 'held' held"
                )
                try:
                    yield Deployment(list(etcd_endpoints), ns, orch, records)
                finally:
                    apps.release(directory)  # before the roles close: the held step ends, workers drain at once
        finally:
            await client.delete(ns + "/", prefix=True)


async def cli(*args: str, timeout_s: float = 60.0) -> tuple[int, str, str]:
    """Run ``python -m whizorch ARGS`` (200 columns); its exit status, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "whizorch", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, COLUMNS="200"),
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def cli_ok(d: Deployment, *args: str) -> str:
    """Run a command against the deployment; it must exit 0 without stderr noise."""
    code, out, err = await cli(*args, "--etcd", ",".join(d.endpoints), "--namespace", d.ns)
    assert code == 0, err
    assert "Traceback" not in err
    return out


async def settled_status(deployment: Deployment) -> dict[str, Any]:
    """``status --json`` once it shows the deployment settled: the orchestrator leading
    every shard (in the terms it holds now), every worker registered once, the held
    step's task placed. A role whose lease lapsed under load comes back by itself; this
    waits for it."""

    async def read() -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(await cli_ok(deployment, "status", "--json"))
        orch = deployment.orchestrator
        assert orch.is_leader and (doc["leader"]["node"], doc["leader"]["term"]) == (orch.node_id, orch.term)
        # one orchestrator leads every shard
        shards = [(sh["shard"], sh["node"], sh["term"]) for sh in doc["shards"]]
        assert shards == [(k, orch.node_id, t) for k, t in orch.shards.items()], doc["shards"]
        assert doc["orchestrators"] == [
            {"node": orch.node_id, "lease": doc["leader"]["lease"], "leads": sorted(orch.shards)}
        ], doc["orchestrators"]
        regions = {r["name"]: r for r in doc["regions"]}
        assert {n: (r["healthy"], r["workers"]) for n, r in regions.items()} == {
            "eu": (True, 2), "us": (True, 1), "ap": (True, 1)
        }, doc["regions"]
        assert sum(r["tasks"] for r in regions.values()) == 1, doc["regions"]  # the held step's task
        return doc

    return await eventually_async(read, timeout=90, interval=1.0)


async def test_status_json_names_the_leader_regions_sagas_and_etcd_members(deployment: Deployment) -> None:
    """status --json: the orchestrator's node id and term, 3 healthy regions, saga counts, etcd members."""
    doc = await settled_status(deployment)
    assert doc["namespace"] == deployment.ns
    assert doc["candidates"] == 1
    assert sum(sh["in_flight"] for sh in doc["shards"]) == 1  # the held saga, on its shard
    regions = {r["name"]: r for r in doc["regions"]}
    assert regions["eu"]["worker_ids"] == ["eu-0", "eu-1"]
    assert (regions["eu"]["compliance"], regions["eu"]["cost"]) == (["gdpr"], 1.5)
    assert (regions["us"]["compliance"], regions["ap"]["compliance"]) == (["sox"], [])
    assert doc["sagas"] == {
        "pending": 0, "in_flight": {"running": 1, "compensating": 0},
        "final": {"completed": 2, "compensated": 1, "failed": 1}, "total": 5, "exact": True, "scanned": 5,
    }  # fmt: skip
    etcd = doc["etcd"]
    assert len(etcd["members"]) >= len(deployment.endpoints)  # 3 local members; 1 container
    leaders = [m for m in etcd["members"] if m["is_leader"]]
    assert len(leaders) == 1 and leaders[0]["name"] == etcd["leader"]
    # a container advertises addresses of its own: check the members at our endpoints
    ours = [m for m in etcd["members"] if any(u.split("://")[-1] in deployment.endpoints for u in m["client_urls"])]
    assert ours and all(m["reachable"] and m["db_size"] > 0 for m in ours)
    assert etcd["raft_term"] > 0 and etcd["db_size"] > 0 and etcd["revision"] >= doc["revision"]


async def test_status_human_output_shows_leader_regions_and_members(deployment: Deployment) -> None:
    """status (tables): the shards led and by whom, each shard's term, each region, the
    etcd leader member."""

    async def read() -> str:
        out = await cli_ok(deployment, "status")
        orch = deployment.orchestrator
        assert f"{len(orch.shards)} of {len(orch.shards)} shards led" in out, out
        assert f"{orch.node_id}: {len(orch.shards)}" in out, out
        assert all(str(term) in out for term in orch.shards.values()), out
        assert "healthy" in out and "down" not in out, out  # a role back from a lapsed lease
        return out

    out = await eventually_async(read, timeout=90, interval=1.0)
    for region in WORKERS:
        assert region in out
    assert "leader" in out and "follower" in out


async def test_sagas_list_json_in_id_order_filtered_and_paged(deployment: Deployment) -> None:
    """sagas list --json: every saga in id order; --status and --type filter; --limit and
    --after page through them, each page naming the next one's cursor."""
    doc = json.loads(await cli_ok(deployment, "sagas", "list", "--json"))
    rows = doc["sagas"]
    assert [r["id"] for r in rows] == ["comp", "dead", "held", "ok-1", "ok-2"]
    assert (doc["matched"], doc["scanned"], doc["next"]) == (5, 5, None)
    by_id = {r["id"]: r for r in rows}
    assert by_id["held"]["status"] == "running" and by_id["held"]["step"] == "b"
    # the regions the record names (eu, where geo's steps go, unless one failed over)
    assert by_id["comp"]["regions"] == deployment.records["comp"].regions and by_id["comp"]["duration_s"] > 0
    assert "compensation gave up for c" in by_id["dead"]["error"]

    async def ids(*args: str) -> list[str]:
        return [r["id"] for r in json.loads(await cli_ok(deployment, "sagas", "list", "--json", *args))["sagas"]]

    assert sorted(await ids("--status", "completed")) == ["ok-1", "ok-2"]
    assert await ids("--status", "failed") == ["dead"]
    assert await ids("--type", "geo") == ["comp"]
    first = json.loads(await cli_ok(deployment, "sagas", "list", "--json", "--limit", "2"))
    assert ([r["id"] for r in first["sagas"]], first["next"]) == (["comp", "dead"], "dead")
    second = json.loads(await cli_ok(deployment, "sagas", "list", "--json", "--limit", "2", "--after", "dead"))
    assert ([r["id"] for r in second["sagas"]], second["next"]) == (["held", "ok-1"], "ok-1")
    last = json.loads(await cli_ok(deployment, "sagas", "list", "--json", "--limit", "2", "--after", "ok-1"))
    assert ([r["id"] for r in last["sagas"]], last["next"]) == (["ok-2"], None)
    completed = json.loads(await cli_ok(deployment, "sagas", "list", "--json", "--status", "completed", "--limit", "1"))
    assert ([r["id"] for r in completed["sagas"]], completed["next"]) == (["ok-1"], "ok-1")
    assert completed["scanned"] == 4  # comp, dead, held, then ok-1 matched


async def test_sagas_list_refuses_a_bad_limit_or_cursor(deployment: Deployment) -> None:
    """--limit 0 and an --after that is no saga id: exit 2 naming the option, no traceback."""
    target = ("--etcd", ",".join(deployment.endpoints), "--namespace", deployment.ns)
    code, out, err = await cli("sagas", "list", "--limit", "0", *target)
    assert code == 2 and out == "" and "--limit" in err and "Traceback" not in err
    code, out, err = await cli("sagas", "list", "--after", "no/such id", *target)
    assert code == 2 and out == "" and "--after" in err and "not a saga id" in err and "Traceback" not in err


async def test_sagas_list_table_shows_ids_and_statuses(deployment: Deployment) -> None:
    """sagas list (table): one line per saga with its status."""
    out = await cli_ok(deployment, "sagas", "list", "--status", "compensated")
    assert "comp" in out and "compensated" in out and "geo" in out
    assert "ok-1" not in out
    assert "1 shown, 5 scanned; end of the list" in out


async def test_sagas_show_json_is_the_record_with_durations(deployment: Deployment) -> None:
    """sagas show --json: the record's steps (states, regions, runs) plus durations."""
    doc = json.loads(await cli_ok(deployment, "sagas", "show", "comp", "--json"))
    assert (doc["id"], doc["saga"], doc["status"]) == ("comp", "geo", "compensated")
    steps = doc["steps"]
    assert [s["name"] for s in steps] == ["a", "b", "c", "d"]
    assert [s["state"] for s in steps] == ["compensated", "compensated", "compensated", "failed"]
    record = deployment.records["comp"]
    assert [s["regions"] for s in steps] == [st.regions for st in record.steps]  # eu, unless one failed over
    assert (steps[3]["run"], steps[3]["failures"]) == (3, 3)
    assert all(s["duration_s"] is not None and s["duration_s"] >= 0 for s in steps)
    assert doc["duration_s"] > 0 and doc["history"] and doc["failovers"] == []


async def test_sagas_show_timeline_reads_in_a_terminal(deployment: Deployment) -> None:
    """sagas show (tables): the steps with region and compensation, the errors, the
    failovers (or "no failovers") and every event of the history, as the record has them."""
    record = deployment.records["dead"]
    out = await cli_ok(deployment, "sagas", "show", "dead")
    for st in record.steps:
        assert f" {st.name} " in out
        assert st.region is None or st.region in out
    assert "compensat" in out and "gave up" in out
    d_error = record.steps[3].error
    assert d_error and d_error[:20] in out, (d_error, out)  # "d failed on attempt 3", or a lost claim's
    for entry in record.history:  # event names are never folded across lines
        assert f" {entry['event']} " in out, (entry, out)
    assert "compensation_dispatched" in {h["event"] for h in record.history}
    if record.failovers:  # a worker's lease lapsed under load
        assert "failovers" in out and all(f"{f['from']} -> {f['to']}" in out for f in record.failovers)
    else:
        assert "no failovers" in out


async def test_show_unknown_id_exits_1_with_a_message(deployment: Deployment) -> None:
    """sagas show of an id nobody submitted: exit 1, one clear line on stderr, no traceback."""
    code, out, err = await cli(
        "sagas", "show", "no-such-saga", "--etcd", ",".join(deployment.endpoints), "--namespace", deployment.ns
    )
    assert code == 1 and out == ""
    assert "no saga 'no-such-saga'" in err and "Traceback" not in err


async def test_without_a_leader_submissions_show_as_pending(deployment: Deployment) -> None:
    """In a namespace with no orchestrator: status says no leader, the submission is pending."""
    ns = f"{deployment.ns}-idle"
    async with EtcdClient(deployment.endpoints) as client, SagaClient(client, namespace=ns) as sagas:
        try:
            handle = await sagas.submit(apps.trip, {}, saga_id="waiting")
            target = ("--etcd", ",".join(deployment.endpoints), "--namespace", ns)
            code, out, err = await cli("status", "--json", *target)
            assert code == 0, err
            doc = json.loads(out)
            assert (doc["leader"], doc["candidates"], doc["regions"]) == (None, 0, [])
            assert doc["sagas"]["pending"] == doc["sagas"]["total"] == 1
            code, out, err = await cli("status", *target)
            assert code == 0 and "no leader" in out, err
            code, out, err = await cli("sagas", "show", "waiting", "--json", *target)
            assert code == 0, err
            assert json.loads(out) == {"id": "waiting", "saga": "trip", "status": "pending", "txid": handle.txid}
        finally:
            await client.delete(ns + "/", prefix=True)


async def test_unreachable_etcd_exits_2_naming_the_endpoints() -> None:
    """status with nothing listening: exit 2, one line naming the endpoint, no traceback."""
    code, out, err = await cli("status", "--etcd", "127.0.0.1:1", "--json")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "cannot reach etcd at 127.0.0.1:1" in err, err
