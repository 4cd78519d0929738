"""The saga engine against real etcd, in one process: Orchestrator, Worker and
SagaClient share this test's event loop (never a mock).

The sagas live in ``saga_apps``; their handlers record every run (start and end,
attempt, region, idempotency key) in a file under ``tmp_path``, so a test checks what
actually ran and in which order, not only the saga record. Tests on the module's
shared cluster work in a namespace of their own (the ``prefix`` fixture), deleted
afterwards; the member-kill test starts a cluster of its own. Orchestrators and
workers as separate processes (SIGKILL, SIGSTOP) are in ``test_saga_processes.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import saga_apps as apps
from _engine import RESULT_S, Engine, engine_on

from whizorch import ConfigError, EtcdClient, RequestTooLargeError
from whizorch.errors import SagaFailedError
from whizorch.saga import SagaClient, SagaRecord, Settings
from whizorch.testing import LocalEtcdCluster, eventually_async

# -- compensation ------------------------------------------------------------------------


@pytest.mark.etcd34
async def test_compensation_in_reverse_order_each_by_its_own_policy(engine: Engine) -> None:
    """Step d fails past its 3 attempts: c, b, a are compensated last first, and each
    compensation is retried by its own policy (c fails 3 times and succeeds on its 4th
    run, b fails twice and succeeds on its 3rd): the saga ends compensated."""
    await engine.leader()
    await engine.worker()
    plan = engine.plan(fail={"d": 99}, comp_fail={"c": 3, "b": 2})
    with pytest.raises(SagaFailedError) as info:
        await engine.sagas.execute(apps.trip, plan, saga_id="comp-order", timeout_s=RESULT_S)
    result = info.value.result
    assert result.status == "compensated", result.error
    assert "step 'd' failed" in (result.error or "") and "d failed on attempt 3" in (result.error or "")

    assert engine.runs("comp-order", kind="run") == [("a", 1), ("b", 1), ("c", 1), ("d", 1), ("d", 2), ("d", 3)]
    assert engine.runs("comp-order", kind="compensate") == [
        ("c", 1), ("c", 2), ("c", 3), ("c", 4), ("b", 1), ("b", 2), ("b", 3), ("a", 1),
    ]  # fmt: skip
    # a compensation starts only after the previous one ended, and after d's last failure
    runs = apps.read_runs(engine.dir)
    d_failed = max(r["t"] for r in runs if r["step"] == "d" and r["phase"] == "end")
    comp = [r for r in runs if r["kind"] == "compensate"]
    assert min(r["t"] for r in comp) > d_failed
    assert all(prev["t"] <= nxt["t"] for prev, nxt in zip(comp, comp[1:], strict=False))
    rec = result.record
    assert [s.state for s in rec.steps] == ["compensated", "compensated", "compensated", "failed"]
    assert [(s.comp_run, s.comp_failures) for s in rec.steps[:3]] == [(1, 0), (3, 2), (4, 3)]
    assert rec.steps[3].failures == 3


@pytest.mark.etcd34
async def test_compensation_gives_up_saga_failed_and_kept_for_an_operator(engine: Engine) -> None:
    """Compensations of c and b fail every time: each gives up after its own number of
    runs (c 4, b 3), a is still compensated, and the saga ends ``failed`` with the reason,
    listed by ``list(status="failed")`` (the dead-letter view)."""
    await engine.leader()
    await engine.worker()
    plan = engine.plan(fail={"d": 99}, comp_fail={"c": 99, "b": 99})
    with pytest.raises(SagaFailedError) as info:
        await engine.sagas.execute(apps.trip, plan, saga_id="dead-letter", timeout_s=RESULT_S)
    assert info.value.status == "failed"
    error = info.value.error
    assert "step 'd' failed" in error and "compensation gave up for b, c" in error, error
    assert engine.runs("dead-letter", kind="compensate") == [
        ("c", 1), ("c", 2), ("c", 3), ("c", 4), ("b", 1), ("b", 2), ("b", 3), ("a", 1),
    ]  # fmt: skip
    rec = await engine.record("dead-letter")
    assert [s.state for s in rec.steps] == ["compensated", "comp_failed", "comp_failed", "failed"]
    assert rec.steps[1].comp_error == "RuntimeError: compensation of b failed on attempt 3"
    assert any(h["event"] == "compensation_gave_up" for h in rec.history)

    failed = await engine.sagas.list(status="failed")
    assert [(s.saga_id, s.saga, s.error) for s in failed] == [("dead-letter", "trip", error)]
    assert await engine.sagas.list(status="compensated") == []


# -- submission ------------------------------------------------------------------------


@pytest.mark.etcd34
async def test_same_saga_id_from_two_clients_at_once_is_one_saga(
    engine: Engine, etcd_endpoints: list[str]
) -> None:
    """Two clients (two connections) submit the same id at the same moment: one saga
    runs (each step once), both get its txid and the same outcome; the same id with
    another saga type is refused with ConfigError."""
    await engine.leader()
    await engine.worker()
    plan = engine.plan(sleep={"b": 0.2})
    async with (
        EtcdClient(etcd_endpoints) as one,
        EtcdClient(list(reversed(etcd_endpoints))) as two,
        SagaClient(one, namespace=engine.ns) as first,
        SagaClient(two, namespace=engine.ns) as second,
    ):
        h1, h2 = await asyncio.gather(
            first.submit(apps.trip, plan, saga_id="twice"), second.submit("trip", plan, saga_id="twice")
        )
        assert h1.txid == h2.txid > 0
        r1, r2 = await asyncio.gather(h1.result(timeout_s=RESULT_S), h2.result(timeout_s=RESULT_S))
        assert r1.status == r2.status == "completed"
        assert r1.txid == r2.txid == h1.txid
        assert r1.outputs == r2.outputs and set(r1.outputs) == {"a", "b", "c", "d"}
        assert engine.runs("twice", kind="run") == [("a", 1), ("b", 1), ("c", 1), ("d", 1)]
        assert [r["txid"] for r in apps.read_runs(engine.dir)] == [h1.txid] * 8

        # once more with the same type: the same saga, not a new one
        again = await first.submit(apps.trip, plan, saga_id="twice")
        assert again.txid == h1.txid
        with pytest.raises(ConfigError, match="already used by a 'trip' saga") as info:
            await second.submit(apps.policy, plan, saga_id="twice")
        assert isinstance(info.value, ValueError)
        assert [s.saga_id for s in await engine.sagas.list()] == ["twice"]


@pytest.mark.etcd34
async def test_oversized_input_is_refused_and_nothing_written(engine: Engine) -> None:
    """An input over ``max_payload_bytes`` raises RequestTooLargeError naming its size
    and the limit; no submission (nor anything else) is written."""
    with pytest.raises(RequestTooLargeError, match=r"saga input is \d+ bytes, over the limit of 65536 bytes") as info:
        await engine.sagas.submit(apps.trip, {"blob": "x" * 70_000}, saga_id="too-big")
    assert info.value.size is not None and info.value.size > 70_000
    assert await engine.keys() == []
    small = SagaClient(engine.client, namespace=engine.ns, max_payload_bytes=100)
    with pytest.raises(RequestTooLargeError, match="over the limit of 100 bytes"):
        await small.submit(apps.trip, {"blob": "x" * 100})
    assert await engine.keys() == []


# -- retries -------------------------------------------------------------------------


@pytest.mark.etcd34
async def test_retryable_and_non_retryable_errors(engine: Engine) -> None:
    """A retryable error is retried by the step's policy; an error in ``give_up_on``, or
    not in ``retry_on``, fails the step at once (one run) and the saga compensates."""
    await engine.leader()
    await engine.worker()
    cases = {
        "retried": engine.plan(fail={"strict": 2}),  # RuntimeError twice, then ok
        "give-up": engine.plan(fail={"strict": 1}, error={"strict": "ValueError"}),
        "not-retry-on": engine.plan(fail={"picky": 1}, error={"picky": "KeyError"}),
        "retry-on": engine.plan(fail={"picky": 2}, error={"picky": "ConnectionError"}),
    }
    results = await asyncio.gather(
        *(engine.sagas.execute(apps.policy, p, saga_id=sid, timeout_s=RESULT_S, raise_on_failure=False) for sid, p in cases.items())
    )
    by_id = {r.saga_id: r for r in results}
    assert by_id["retried"].status == "completed"
    assert engine.runs("retried", kind="run") == [("first", 1), ("strict", 1), ("strict", 2), ("strict", 3), ("picky", 1), ("slow", 1)]
    assert by_id["retried"].outputs["strict"]["attempt"] == 3
    assert by_id["retry-on"].status == "completed"
    assert [a for s, a in engine.runs("retry-on", kind="run") if s == "picky"] == [1, 2, 3]

    for sid, step, exc in (("give-up", "strict", "ValueError"), ("not-retry-on", "picky", "KeyError")):
        r = by_id[sid]
        assert r.status == "compensated", (sid, r.error)
        assert f"step {step!r} failed: {exc}" in (r.error or ""), r.error
        assert [a for s, a in engine.runs(sid, kind="run") if s == step] == [1], sid
        assert engine.runs(sid, kind="compensate") == [("first", 1)], sid
        st = r.record.steps[[s.name for s in r.record.steps].index(step)]
        assert (st.state, st.failures, st.run) == ("failed", 1, 1)


@pytest.mark.etcd34
async def test_step_timeout_counts_as_a_failure_and_is_retried(engine: Engine) -> None:
    """A run that outlives the step's 0.5 s timeout is cancelled, counted as a failed run
    ("timed out"), and retried; the retry succeeds."""
    await engine.leader()
    await engine.worker()
    started = time.monotonic()
    result = await engine.sagas.execute(apps.policy, engine.plan(hold={"slow": 1}), saga_id="slowpoke", timeout_s=RESULT_S)
    took = time.monotonic() - started
    assert result.status == "completed"
    assert [a for s, a in engine.runs("slowpoke", kind="run") if s == "slow"] == [1, 2]
    ends = [r for r in apps.read_runs(engine.dir) if r["step"] == "slow" and r["phase"] == "end"]
    assert [(e["attempt"], e["outcome"]) for e in ends] == [(1, "cancelled"), (2, "ok")]
    slow = result.record.steps[3]
    assert (slow.state, slow.run, slow.failures) == ("done", 2, 1)
    failed = [h for h in result.record.history if h["event"] == "run_failed"]
    assert [(h["step"], h["attempt"]) for h in failed] == [(3, 1)]
    # the worker's own 0.5 s timeout ended attempt 1 (its error and the cancelled run say
    # so), not the leader's later deadline: no clock needed to tell
    assert "timed out after 0.5s" in failed[0]["error"]
    print(f"\n[saga] a saga with one timed-out step took {took:.2f}s")


# -- cancel ----------------------------------------------------------------------------


@pytest.mark.etcd34
async def test_cancel_a_running_saga_compensates_completed_steps(engine: Engine) -> None:
    """Cancelling while step b runs: b is not interrupted; once it ends, b and a are
    compensated (b first), c and d never run, the saga ends compensated with an error
    that says it was cancelled."""
    await engine.leader()
    await engine.worker()
    handle = await engine.sagas.submit(apps.trip, engine.plan(hold={"b": 99}), saga_id="cancel-me")
    await engine.held("cancel-me", "b")
    await handle.cancel()
    await handle.cancel()  # twice is fine

    async def noted() -> None:
        rec = await engine.record("cancel-me")
        assert rec.cancel_requested and rec.status == "running" and rec.steps[1].state == "dispatched"

    await eventually_async(noted, timeout=10)
    apps.release(engine.dir, "cancel-me", "b")
    with pytest.raises(SagaFailedError) as info:
        await handle.result(timeout_s=RESULT_S)
    result = info.value.result
    assert result.status == "compensated"
    assert "cancel" in (result.error or "")
    assert engine.runs("cancel-me", kind="run") == [("a", 1), ("b", 1)]
    assert engine.runs("cancel-me", kind="compensate") == [("b", 1), ("a", 1)]
    assert [s.state for s in result.record.steps] == ["compensated", "compensated", "skipped", "skipped"]
    assert await handle.status() == "compensated"


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.etcd34
async def test_unknown_saga_types_end_with_a_reason_and_are_listed(engine: Engine) -> None:
    """A saga type the leader does not know ends ``failed`` with the reason; one the
    leader knows but no worker has waits for a worker with its definition, then (past
    ``no_worker_timeout_s``) ends compensated naming the missing definition, never run.
    Both stay listable: nothing is lost."""
    await engine.leader(settings=Settings(no_worker_timeout_s=1.0))
    await engine.worker()
    with pytest.raises(SagaFailedError) as info:
        await engine.sagas.execute("no-such-saga", {"x": 1}, saga_id="unknown", timeout_s=RESULT_S)
    assert info.value.status == "failed"
    assert "no saga type 'no-such-saga' is registered" in info.value.error

    orphan = await engine.sagas.execute(apps.orphan, engine.plan(), saga_id="orphan", timeout_s=RESULT_S, raise_on_failure=False)
    assert orphan.status == "compensated"
    assert f"no live worker can run saga 'orphan' version {apps.orphan.version!r}" in (orphan.error or ""), orphan.error
    assert orphan.record.steps[0].run == 0  # no worker without its definition was given it
    assert "waiting_for_worker" in [h["event"] for h in orphan.record.history]

    listed = {s.saga_id: s for s in await engine.sagas.list()}
    assert listed["unknown"].status == "failed" and listed["unknown"].saga == "no-such-saga"
    assert listed["orphan"].status == "compensated" and listed["orphan"].error == orphan.error
    assert [s.saga_id for s in await engine.sagas.list(status="failed")] == ["unknown"]


@pytest.mark.etcd34
async def test_undecodable_record_is_quarantined_on_rebuild(engine: Engine) -> None:
    """Records of sagas in flight that nobody can decode (broken JSON) are, once a new
    leader rebuilds, replaced by ``failed`` records that name the reason and keep the
    raw bytes; a record from a newer schema is left untouched (a newer whizorch owns
    it); both are noted under quarantine/; other sagas in flight carry on."""
    first = await engine.leader(node_id="first")
    await engine.worker()
    for sid in ("broken", "future"):
        await engine.sagas.submit(apps.trip, engine.plan(hold={"a": 1}), saga_id=sid)
        await engine.held(sid, "a")
    handle = await engine.sagas.submit(apps.trip, engine.plan(hold={"b": 1}), saga_id="in-flight")
    await engine.held("in-flight", "b")
    broken = b'{"v": 1, "id": "broken", "saga": "trip", "steps": ['
    future = json.dumps({"v": 99, "id": "future", "saga": "trip"}).encode()
    await engine.client.put(f"{engine.ns}/saga/broken", broken)
    await engine.client.put(f"{engine.ns}/saga/future", future)

    second = await engine.orchestrator(node_id="second")
    await first.aclose()  # resigns: the second leads at once and rebuilds
    await second.wait_leader(10)
    apps.release(engine.dir, "in-flight", "b")
    assert (await handle.result(timeout_s=RESULT_S)).status == "completed"

    async def quarantined() -> SagaRecord:
        rec = await engine.record("broken")
        assert rec.status == "failed"
        notes = await engine.client.get(f"{engine.ns}/quarantine/", prefix=True)
        assert len(notes.kvs) == 2
        return rec

    rec = await eventually_async(quarantined, timeout=10)
    assert "undecodable saga record" in (rec.error or "") and "not valid JSON" in (rec.error or "")
    assert [h["raw"] for h in rec.history if h["event"] == "raw_record"] == [broken.decode()]
    assert (await engine.client.get(f"{engine.ns}/saga/future")).kvs[0].value == future  # untouched
    notes = await engine.client.get(f"{engine.ns}/quarantine/", prefix=True)
    reasons = sorted(json.loads(kv.value)["reason"] for kv in notes.kvs)
    assert "newer than this whizorch" in reasons[0] and "left untouched" in reasons[0], reasons
    assert "not valid JSON" in reasons[1], reasons
    assert second.quarantined == {"saga": 2}
    assert [s.saga_id for s in await engine.sagas.list(status="failed")] == ["broken"]
    assert engine.runs("in-flight", kind="run") == [("a", 1), ("b", 1), ("c", 1), ("d", 1)]


# -- regions -----------------------------------------------------------------------------


@pytest.mark.etcd34
async def test_sagas_wait_for_a_region_and_run_once_one_registers(engine: Engine) -> None:
    """Sagas submitted while no worker lives wait for a region (not failed, not lost);
    the first worker to register runs them all, including those submitted while it
    registers (the leader's region view may lag its submissions)."""
    await engine.leader()
    early = [await engine.sagas.submit(apps.trip, engine.plan(), saga_id=f"early-{i}") for i in range(3)]

    async def waiting() -> None:
        for h in early:
            rec = await engine.record(h.saga_id)
            assert rec.steps[0].waiting_region and any(e["event"] == "waiting_for_region" for e in rec.history)

    await eventually_async(waiting, timeout=10)
    _, *late = await asyncio.gather(
        engine.worker(), *(engine.sagas.submit(apps.trip, engine.plan(), saga_id=f"late-{i}") for i in range(5))
    )
    started = time.monotonic()
    results = await asyncio.gather(*(h.result(timeout_s=RESULT_S) for h in [*early, *late]))
    assert {r.status for r in results} == {"completed"}
    assert time.monotonic() - started < 10, "a saga waited for a region that was there"


async def test_no_region_for_too_long_fails_the_step(engine: Engine) -> None:
    """With no worker for ``no_region_timeout_s`` the step fails, the saga ends
    compensated with the reason, and it is listed (not lost)."""
    await engine.leader(settings=Settings(no_region_timeout_s=1.0))
    result = await engine.sagas.execute(apps.trip, engine.plan(), saga_id="nowhere", timeout_s=RESULT_S, raise_on_failure=False)
    assert result.status == "compensated"
    assert "step 'a' failed: no healthy region" in (result.error or ""), result.error
    assert engine.runs("nowhere") == []
    assert [(s.saga_id, s.status) for s in await engine.sagas.list()] == [("nowhere", "compensated")]


# -- retention -------------------------------------------------------------------------


async def test_retention_removes_finished_sagas_but_keeps_failed_ones(engine: Engine) -> None:
    """With ``retention_s=2`` a finished saga is listed, then leaves the hot keyspace
    (its saga, input, run, task and index keys are deleted); a failed saga (the
    dead-letter view) stays."""
    await engine.leader(retention_s=2.0)
    await engine.worker()
    done, failed = await asyncio.gather(
        engine.sagas.execute(apps.trip, engine.plan(), saga_id="done", timeout_s=RESULT_S),
        engine.sagas.execute("no-such-saga", None, saga_id="dead", timeout_s=RESULT_S, raise_on_failure=False),
    )
    finished_at = time.monotonic()
    assert done.status == "completed" and failed.status == "failed"
    assert {s.saga_id for s in await engine.sagas.list()} == {"done", "dead"}
    mine = [k for k in await engine.keys() if "/done" in k]
    assert any("/run/eu/done/" in k for k in mine) and any("/input/done" in k for k in mine), mine

    async def purged() -> None:
        left = [k for k in await engine.keys() if "/done" in k]
        assert left == []

    await eventually_async(purged, timeout=15, interval=0.2)
    assert time.monotonic() - finished_at >= 1.0  # not before its retention period
    assert await engine.sagas.get("done") is None
    assert [s.saga_id for s in await engine.sagas.list()] == ["dead"]
    assert (await engine.record("dead")).status == "failed"


# -- etcd trouble ----------------------------------------------------------------------


@pytest.mark.etcd34
@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_sagas_complete_while_an_etcd_member_is_killed(etcd_cluster: LocalEtcdCluster, tmp_path: Path) -> None:
    """The Raft leader among the etcd members is SIGKILLed while sagas run: the two
    others keep a quorum, and every saga completes, each step recorded as done."""
    async with (
        EtcdClient(etcd_cluster.endpoints, timeout_s=2.0, retry_deadline_s=10.0) as client,
        engine_on(client, "kill", tmp_path) as engine,
    ):
        await engine.orchestrator(node_id="o1")
        await engine.orchestrator(node_id="o2")
        await engine.worker("eu", worker_id="w1")
        await engine.worker("eu", worker_id="w2")
        plan = engine.plan(sleep={"a": 0.3, "b": 0.3, "c": 0.3, "d": 0.3})
        handles = [await engine.sagas.submit(apps.trip, plan, saga_id=f"s{i}") for i in range(8)]

        def some_started() -> None:
            assert len({r["saga_id"] for r in apps.read_runs(tmp_path)}) >= 4

        await eventually_async(some_started, timeout=20)
        victim = etcd_cluster.wait_leader()
        killed_at = time.monotonic()
        await victim.akill()
        # within the steps' deadline (timeout 30 s + grace 10 s): a stranded step fails this
        results = await asyncio.gather(*(h.result(timeout_s=30) for h in handles))
        print(f"\n[saga] etcd leader killed -> {len(results)} sagas done {time.monotonic() - killed_at:.2f}s later")
        assert {r.status for r in results} == {"completed"}
        for h in handles:
            steps = [s for s, _ in engine.runs(h.saga_id, kind="run", phase="start")]
            assert sorted(set(steps)) == ["a", "b", "c", "d"], h.saga_id
        assert apps.overlaps(apps.read_runs(tmp_path)) == []
