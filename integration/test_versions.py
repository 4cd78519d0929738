"""Versioned saga definitions on real etcd: a saga is pinned to the version it started
with, is driven by that version whichever leader runs it, and runs only on workers that
have it; a step with no such worker waits for one (docs/design.md, "Versions")."""

from __future__ import annotations

import contextlib
import json

import pytest
import saga_apps as apps
from _engine import RESULT_S, Engine

from whizorch import ConfigError
from whizorch.saga import (
    App,
    Orchestrator,
    OrchestratorEvent,
    RegionPreferenceUnmet,
    Saga,
    Settings,
)
from whizorch.testing import eventually_async


def versions_run(engine: Engine, saga_id: str) -> list[tuple[str, str]]:
    """(step, version) of every run of ``saga_id`` that started, in order."""
    return [(r["step"], r["version"]) for r in apps.read_runs(engine.dir) if r["saga_id"] == saga_id and r["phase"] == "start"]


@pytest.mark.etcd34
async def test_a_step_waits_for_a_worker_with_its_version(engine: Engine) -> None:
    """A saga pinned to version 1 while the only worker has version 2: its first step
    waits (history, ``waiting()``), nothing runs, and once a worker with version 1
    registers every step runs there, at version 1."""
    orch = await engine.leader(app=App([apps.order_v1, apps.order_v2]))
    await engine.worker(app=App([apps.order_v2]))
    handle = await engine.sagas.submit(apps.order_v1, engine.plan(), saga_id="old")

    async def waits() -> None:
        rec = await engine.sagas.get("old")
        assert rec is not None and rec.version == "1" and rec.steps[0].waiting_for == "worker"
        assert orch.waiting() == {"worker": 1}
        reason = next(h for h in rec.history if h["event"] == "waiting_for_worker")["reason"]
        assert "no live worker can run saga 'order' version '1' (live workers have: order 2)" in reason, reason

    await eventually_async(waits, timeout=20, message="the step waits for a version 1 worker")
    assert versions_run(engine, "old") == []
    await engine.worker(app=App([apps.order_v1]))
    result = await handle.result(timeout_s=RESULT_S)
    assert result.status == "completed"
    assert versions_run(engine, "old") == [("a", "1"), ("b", "1"), ("c", "1")]
    assert orch.waiting() == {}


@pytest.mark.etcd34
async def test_a_saga_keeps_its_version_across_leaders(engine: Engine) -> None:
    """A saga submitted by name is pinned to the leader's current version (1); a new
    leader whose App holds only version 2 (b removed) drives it to the end with version
    1's steps, read from etcd; a saga submitted after that gets version 2."""
    first = await engine.leader(app=App([apps.order_v1]))
    await engine.worker(app=App([apps.order_v1, apps.order_v2]))
    handle = await engine.sagas.submit("order", engine.plan(hold={"b": 1}), saga_id="pinned")
    await engine.held("pinned", "b")
    await first.aclose()  # resigns: the next candidate leads at once
    second = await engine.leader(app=App([apps.order_v2]))
    assert second.is_leader
    apps.release(engine.dir, "pinned", "b")
    result = await handle.result(timeout_s=RESULT_S)
    assert result.status == "completed" and result.record.version == "1"
    assert [s.name for s in result.record.steps] == ["a", "b", "c"]
    assert versions_run(engine, "pinned") == [("a", "1"), ("b", "1"), ("c", "1")]

    later = await engine.sagas.execute("order", engine.plan(), saga_id="later", timeout_s=RESULT_S)
    assert later.record.version == "2" and [s.name for s in later.record.steps] == ["a", "c"]
    assert versions_run(engine, "later") == [("a", "2"), ("c", "2")]


@pytest.mark.etcd34
async def test_a_worker_without_the_version_is_never_given_its_steps(engine: Engine) -> None:
    """Two workers in one region, one with each version: every run of a version 2 saga
    lands on the version 2 worker, every run of a version 1 saga on the other."""
    await engine.leader(app=App([apps.order_v1, apps.order_v2]))
    old = await engine.worker(app=App([apps.order_v1]), worker_id="w-old")
    new = await engine.worker(app=App([apps.order_v2]), worker_id="w-new")
    for i in range(4):
        await engine.sagas.execute(apps.order_v1, engine.plan(), saga_id=f"v1-{i}", timeout_s=RESULT_S)
        await engine.sagas.execute(apps.order_v2, engine.plan(), saga_id=f"v2-{i}", timeout_s=RESULT_S)
    runs = [r for r in apps.read_runs(engine.dir) if r["phase"] == "start"]
    assert {r["worker"] for r in runs if r["version"] == "1"} == {old.worker_id}
    assert {r["worker"] for r in runs if r["version"] == "2"} == {new.worker_id}
    assert old.completed == 12 and new.completed == 8


@pytest.mark.etcd34
async def test_workers_advertise_and_definitions_are_published(engine: Engine) -> None:
    """A worker's registration lists the saga types and versions it can run; an
    orchestrator publishes every version in its App, and a client the one it submits."""
    await engine.worker(app=App([apps.order_v1, apps.order_v2]))
    regs = [json.loads(kv.value) for kv in (await engine.client.get(f"{engine.ns}/region/", prefix=True)).kvs]
    assert [r["sagas"] for r in regs] == [{"order": ["1", "2"]}]
    await engine.leader(app=App([apps.order_v1]))
    await engine.sagas.execute(apps.order_v2, engine.plan(), saga_id="by-object", timeout_s=RESULT_S)
    assert sorted(await engine.keys("def")) == [f"{engine.ns}/def/order/1", f"{engine.ns}/def/order/2"]


async def test_a_version_reused_for_other_steps_is_refused(engine: Engine) -> None:
    """A definition published as version "1" and another with the same version but
    other steps: the orchestrator carrying the second stops with an error that names
    the saga, the version and the fix; so does a client submitting it."""
    await engine.leader(app=App([apps.order_v1]))
    changed = Saga("order", version="1")
    changed.step(name="a")(apps.work)
    orch = Orchestrator(engine.client, App([changed]), namespace=engine.ns, lease_ttl_s=2)
    await orch.start()
    try:
        with pytest.raises(ConfigError, match=r"saga 'order' version '1' is already published with other steps.*new version"):
            await orch.join()
    finally:
        with contextlib.suppress(ConfigError):  # aclose re-raises what ended it
            await orch.aclose()
    with pytest.raises(ConfigError, match="already published with other steps"):
        await engine.sagas.submit(changed, {}, saga_id="changed")
    assert await engine.sagas.get("changed") is None and await engine.keys("submit") == []


async def test_an_app_holds_versions_and_the_last_is_current() -> None:
    """An App with two versions of a type: ``get(name)`` is the last added, each version
    is reachable, and what a worker advertises lists both; the same name and version
    twice (another object) is refused, naming the fix."""
    app = App([apps.order_v1, apps.order_v2])
    assert app.get("order") is apps.order_v2 and app.get("order", "1") is apps.order_v1
    assert app.versions("order") == ["1", "2"] and app.served() == {"order": ["1", "2"]}
    twin = Saga("order", version="2")
    twin.step(name="a")(apps.work)
    with pytest.raises(ConfigError, match=r"'order' at version '2' is already registered.*another version"):
        app.add(twin)
    # the default version is a fingerprint of the steps and their options
    assert apps.trip.version.startswith("f") and len(apps.trip.version) == 11
    assert apps.trip.version != apps.geo.version  # same steps, other options (region)


@pytest.mark.etcd34
async def test_a_preferred_region_that_does_not_exist_is_recorded(engine: Engine) -> None:
    """A step that prefers region "ap" in a deployment with none runs in eu, and the
    saga's history says why (not a known region); the orchestrator reports it too."""
    seen: list[OrchestratorEvent] = []
    await engine.leader(app=App([apps.far]), on_event=seen.append)
    await engine.worker("eu", app=App([apps.far]))
    result = await engine.sagas.execute(apps.far, engine.plan(), saga_id="far-1", timeout_s=RESULT_S)
    assert result.regions == ["eu"]
    unmet = [h for h in result.record.history if h["event"] == "region_preference_unmet"]
    assert len(unmet) == 1 and unmet[0]["wanted"] == "ap" and unmet[0]["to"] == "eu"
    assert "region 'ap' is not a known region" in unmet[0]["reason"], unmet[0]
    assert [e.wanted for e in seen if isinstance(e, RegionPreferenceUnmet)] == ["ap"]


async def test_no_worker_for_too_long_fails_naming_the_definition(engine: Engine) -> None:
    """With no worker that has its version for ``no_worker_timeout_s``, the step fails
    and the saga ends compensated, its error naming the saga type and version."""
    await engine.leader(app=App([apps.order_v1, apps.order_v2]), settings=Settings(no_worker_timeout_s=1.0))
    await engine.worker(app=App([apps.order_v2]))
    result = await engine.sagas.execute(apps.order_v1, engine.plan(), saga_id="none", timeout_s=RESULT_S, raise_on_failure=False)
    assert result.status == "compensated"
    assert "no live worker can run saga 'order' version '1'" in (result.error or ""), result.error
