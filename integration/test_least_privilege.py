"""Least privilege per region, with etcd auth on: ``whizorch roles apply`` makes the
roles and users, and a worker of region eu, connected as its own user, can do its own
work but cannot claim, record or forge anything of region us, nor touch saga state.

Each test starts its own one-member cluster with a root user and auth enabled (made
with the adapter's auth admin calls), then runs the real CLI as root.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest

from whizorch import AuthError, EtcdClient
from whizorch.errors import SagaIdConflictError
from whizorch.etcd import AuthConfig, Compare, Op
from whizorch.etcd.auth import (
    Permission,
    PermType,
    auth_enable,
    auth_status,
    role_add,
    role_get,
    role_grant_permission,
    user_add,
    user_get,
    user_grant_role,
)
from whizorch.saga import App, Orchestrator, Saga, SagaClient, StepContext, Worker
from whizorch.saga.roles import deployment_roles
from whizorch.testing import LocalEtcdCluster

MakeCluster = Callable[..., LocalEtcdCluster]

NS = "lp"
ROOT = AuthConfig(username="root", password="root-pw")
ROLE_PASSWORD = "role-pw"  # every user apply --users creates gets it (from the environment)
SAGA = "s1"


def _as(role: str) -> AuthConfig:
    return AuthConfig(username=f"{NS}-{role}", password=ROLE_PASSWORD)


@attrs.frozen
class Secured:
    """A cluster with auth on, the deployment's roles and users applied."""

    endpoints: list[str]
    applied: list[dict[str, Any]]

    def client(self, auth: AuthConfig) -> EtcdClient:
        return EtcdClient(self.endpoints, auth=auth, timeout_s=3.0, retry_deadline_s=3.0)


async def _cli(endpoints: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``whizorch roles ...`` as a process, connecting as root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHIZORCH_")}
    env |= {
        "WHIZORCH_ETCD_USERNAME": ROOT.username,
        "WHIZORCH_ETCD_PASSWORD": ROOT.password,
        "ROLE_PW": ROLE_PASSWORD,
    }
    command = [sys.executable, "-m", "whizorch", "roles", *args, "--etcd", ",".join(endpoints), "--namespace", NS]
    return await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=60)


async def _apply(endpoints: list[str], *extra: str) -> list[dict[str, Any]]:
    done = await _cli(endpoints, "apply", "--regions", "eu,us", "--users", "--password-from-env", "ROLE_PW", "--json", *extra)
    assert done.returncode == 0, done.stderr
    report: list[dict[str, Any]] = json.loads(done.stdout)
    return report


@pytest.fixture
async def secured(etcd_cluster_factory: MakeCluster) -> AsyncIterator[Secured]:
    """One member; root user with the root role, auth on; then ``roles apply --users``."""
    cluster = etcd_cluster_factory(size=1)
    async with EtcdClient(cluster.endpoints) as admin:
        assert await role_add(admin, "root")
        assert await user_add(admin, ROOT.username, password=ROOT.password)
        await user_grant_role(admin, ROOT.username, "root")
        await auth_enable(admin)
    async with EtcdClient(cluster.endpoints, auth=ROOT) as root:
        assert await auth_status(root)
    applied = await _apply(cluster.endpoints)
    yield Secured(cluster.endpoints, applied)


async def test_apply_creates_the_roles_and_users_and_a_rerun_changes_nothing(secured: Secured) -> None:
    """apply creates each role with exactly its permissions and a user holding it; a
    second run keeps everything; an extra permission is reported, and --prune revokes it."""
    specs = deployment_roles(NS, ["eu", "us"])
    assert [(r["role"], r["created"], r["user_created"], r["kept"], r["extra"]) for r in secured.applied] == [
        (s.name, True, True, [], []) for s in specs
    ]
    async with secured.client(ROOT) as root:
        for spec in specs:
            assert set(await role_get(root, spec.name) or ()) == set(spec.permissions)
            assert await user_get(root, spec.name) == (spec.name,)
        again = await _apply(secured.endpoints)
        assert all(not r["created"] and not r["user_created"] and r["granted"] == [] for r in again)
        assert [len(r["kept"]) for r in again] == [len(s.permissions) for s in specs]

        stray = Permission(PermType.READ, b"lp/saga/", b"lp/saga0")
        await role_grant_permission(root, "lp-worker-eu", stray)
        seen = {r["role"]: r for r in await _apply(secured.endpoints)}
        assert seen["lp-worker-eu"]["extra"] == [{"type": "READ", "prefix": "lp/saga/"}]
        assert stray in (await role_get(root, "lp-worker-eu") or ())
        pruned = {r["role"]: r for r in await _apply(secured.endpoints, "--prune")}
        assert pruned["lp-worker-eu"]["revoked"] == [{"type": "READ", "prefix": "lp/saga/"}]
        eu = next(s for s in specs if s.name == "lp-worker-eu")
        assert set(await role_get(root, "lp-worker-eu") or ()) == set(eu.permissions)


async def test_roles_show_prints_the_definitions_without_etcd() -> None:
    """``roles show --json`` is a dry run: it needs no etcd and prints every role's permissions."""
    done = await _cli(["127.0.0.1:1"], "show", "--regions", "eu,us", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert [r["role"] for r in doc] == [s.name for s in deployment_roles(NS, ["eu", "us"])]
    bad = await _cli(["127.0.0.1:1"], "show", "--regions", "eu,us/x")
    assert bad.returncode == 2 and "region 'us/x' contains '/'" in bad.stderr


async def _denied(what: str, call: Any) -> None:
    with pytest.raises(AuthError, match="permission denied"):
        await call
    print(f"refused: {what}")


async def test_a_worker_of_eu_cannot_claim_record_or_forge_anything_of_us(secured: Secured) -> None:
    """As lp-worker-eu: every read or write of region us's tasks, results and registrations,
    of saga records, submissions, cancels and the leader key is refused with AuthError;
    its own region's task read, result txn, registration and lease revoke all work."""
    async with (
        secured.client(_as("orchestrator")) as orch,
        secured.client(_as("worker-eu")) as eu,
        secured.client(_as("worker-us")) as us,
    ):
        # each worker's session lease and registration, as the engine makes them
        eu_lease = (await eu.lease_grant(60)).id
        us_lease = (await us.lease_grant(60)).id
        eu_reg, us_reg = f"{NS}/region/eu/{eu_lease:x}", f"{NS}/region/us/{us_lease:x}"
        await eu.put(eu_reg, "{}", lease=eu_lease)
        await us.put(us_reg, "{}", lease=us_lease)
        # the leader's state and its tasks, each task on its worker's lease
        eu_task = f"{NS}/task/eu/{eu_lease:x}/{SAGA}/0/step-1"
        us_task = f"{NS}/task/us/{us_lease:x}/{SAGA}/1/step-1"
        eu_rev = (await orch.put(eu_task, "{}", lease=eu_lease)).header.revision
        us_rev = (await orch.put(us_task, "{}", lease=us_lease)).header.revision
        await orch.put(f"{NS}/saga/{SAGA}", "{}")
        await orch.put(f"{NS}/leader/abc", "node")
        us_result = f"{NS}/run/us/{SAGA}/1/step-1"
        eu_result = f"{NS}/run/eu/{SAGA}/0/step-1"

        # region us: its tasks (claim), results (record, forge) and registrations
        await _denied("range task/us/", eu.get(f"{NS}/task/us/", prefix=True))
        await _denied("get a us task", eu.get(us_task))
        async with eu.watch(f"{NS}/task/us/", prefix=True) as w:
            # a refused watch is acknowledged, and its first read raises the refusal
            await w.wait_created()
            async with asyncio.timeout(10):
                await _denied("watch task/us/", anext(w))
        await _denied("put a us task", eu.put(us_task, "mine"))
        await _denied("delete a us task", eu.delete(us_task))
        await _denied("put a us result", eu.put(us_result, "forged"))
        await _denied(
            "us result txn (claim + record)",
            eu.txn(
                [Compare.create_revision(us_task, "==", us_rev), Compare.create_revision(us_result, "==", 0)],
                [Op.put(us_result, "forged"), Op.delete(us_task)],
            ),
        )
        await _denied("put a us registration", eu.put(us_reg, "{}"))
        await _denied("delete a us registration", eu.delete(us_reg))
        await _denied("register as us on its own lease", eu.put(f"{NS}/region/us/{eu_lease:x}", "{}", lease=eu_lease))
        await _denied("revoke the us worker's lease", eu.lease_revoke(us_lease))
        await _denied("attach a key to the us worker's lease", eu.put(f"{NS}/run/eu/x/0/step-1", "{}", lease=us_lease))
        # saga state and the coordination keys
        await _denied("get the saga record", eu.get(f"{NS}/saga/{SAGA}"))
        await _denied("put the saga record", eu.put(f"{NS}/saga/{SAGA}", "{}"))
        await _denied("compare the saga record", eu.txn([Compare.version(f"{NS}/saga/{SAGA}", ">", 0)], []))
        await _denied("submit", eu.put(f"{NS}/submit/s2", "{}"))
        await _denied("cancel", eu.put(f"{NS}/cancel/{SAGA}", "{}"))
        await _denied("read the leader", eu.get(f"{NS}/leader/", prefix=True))
        await _denied("put a leader key", eu.put(f"{NS}/leader/{eu_lease:x}", "me", lease=eu_lease))
        await _denied("put ids", eu.put(f"{NS}/ids", ""))
        await _denied("read the whole namespace", eu.get(f"{NS}/", prefix=True))

        # its own: read and watch its tasks, read an earlier step's result of us
        await us.put(us_result, '{"ok": true}')
        assert [kv.key.decode() for kv in (await eu.get(f"{NS}/task/eu/", prefix=True)).kvs] == [eu_task]
        assert (await eu.get(us_result)).first is not None
        # the result txn: fenced on the task, create-if-absent, deleting the task
        res = await eu.txn(
            [Compare.create_revision(eu_task, "==", eu_rev), Compare.create_revision(eu_result, "==", 0)],
            [Op.put(eu_result, '{"ok": true}'), Op.delete(eu_task)],
        )
        assert res.succeeded
        # the leader can still put a task on the worker's lease, and the worker can then
        # refresh its registration on that lease and revoke it (etcd checks write
        # permission on every key of the lease: checkLeasePuts)
        second = f"{NS}/task/eu/{eu_lease:x}/{SAGA}/2/step-1"
        async with eu.watch(f"{NS}/task/eu/", prefix=True) as w:
            await w.wait_created()
            await orch.put(second, "{}", lease=eu_lease)
            async with asyncio.timeout(10):
                assert (await anext(w)).kv.key.decode() == second
        await eu.put(eu_reg, '{"load": 1}', lease=eu_lease)
        info = await orch.lease_time_to_live(eu_lease, keys=True)
        assert info is not None and set(info.keys) == {eu_reg.encode(), second.encode()}
        await eu.lease_revoke(eu_lease)
        assert (await orch.get(second)).first is None and (await orch.get(eu_reg)).first is None
        # what eu could not do, us can: its task and registration are intact
        assert (await orch.get(us_task)).first is not None and (await orch.get(us_reg)).first is not None
        await us.lease_revoke(us_lease)


async def test_client_and_viewer_roles(secured: Secured) -> None:
    """The client submits and cancels and reads records and results, but cannot write a
    record or touch tasks; the viewer reads the namespace and writes nothing."""
    async with (
        secured.client(_as("client")) as client,
        secured.client(_as("viewer")) as viewer,
        secured.client(_as("orchestrator")) as orch,
    ):
        await orch.put(f"{NS}/saga/{SAGA}", "{}")
        await client.txn(
            [Compare.create_revision(f"{NS}/submit/s2", "==", 0)], [Op.put(f"{NS}/submit/s2", "{}")]
        )
        await client.put(f"{NS}/cancel/{SAGA}", "{}")
        assert (await client.get(f"{NS}/saga/", prefix=True)).count == 1
        await _denied("client puts a saga record", client.put(f"{NS}/saga/{SAGA}", "{}"))
        await _denied("client reads tasks", client.get(f"{NS}/task/", prefix=True))
        await _denied("client reads the leader", client.get(f"{NS}/leader/", prefix=True))
        assert (await viewer.get(f"{NS}/", prefix=True)).count == 3
        await _denied("viewer writes", viewer.put(f"{NS}/submit/s3", "{}"))


# -- end to end --------------------------------------------------------------------------

two_regions = Saga("two_regions")


@two_regions.step(name="first", region="eu")
async def _first(ctx: StepContext, value: Any) -> dict[str, Any]:
    return {"ran": "eu"}


@two_regions.step(name="second", region="us")
async def _second(ctx: StepContext, value: Any) -> dict[str, Any]:
    return {"ran": "us"}


async def test_a_two_region_saga_completes_with_every_process_under_its_own_role(secured: Secured) -> None:
    """Orchestrator, a worker in eu, a worker in us and a SagaClient, each connected as
    its own least-privilege user, run a saga with one step in each region to completion."""
    app = App([two_regions])
    async with (
        secured.client(_as("orchestrator")) as orch_c,
        secured.client(_as("worker-eu")) as eu_c,
        secured.client(_as("worker-us")) as us_c,
        secured.client(_as("client")) as client_c,
        Orchestrator(orch_c, app, namespace=NS, lease_ttl_s=5) as orch,
        Worker(eu_c, app, region="eu", namespace=NS, lease_ttl_s=5) as _eu,
        Worker(us_c, app, region="us", namespace=NS, lease_ttl_s=5) as _us,
        SagaClient(client_c, namespace=NS) as sagas,
    ):
        await orch.wait_leader(10)
        result = await sagas.execute(two_regions, {"x": 1}, saga_id="lp-1", timeout_s=15)
        assert result.outputs == {"first": {"ran": "eu"}, "second": {"ran": "us"}}
        # the client may compare an id submitted again with the adopted saga's input
        assert (await sagas.submit(two_regions, {"x": 1}, saga_id="lp-1")).txid == result.txid
        with pytest.raises(SagaIdConflictError):
            await sagas.submit(two_regions, {"x": 2}, saga_id="lp-1")
