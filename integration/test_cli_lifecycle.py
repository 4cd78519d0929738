"""`whizorch worker` and `whizorch orchestrator` as real processes: they stop on SIGTERM
and SIGINT in every state (etcd unreachable, etcd frozen, running, draining), and say
they are ready only once etcd answered.

The roles run the example shop's App (``--app shop.sagas:app --app-dir examples/shop``).
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator

import pytest
from _children import Child, children

from whizorch import EtcdClient
from whizorch.saga import SagaClient
from whizorch.testing import LocalEtcdCluster, eventually_async

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHOP = ROOT / "examples" / "shop"
WHIZORCH = pathlib.Path(sys.executable).parent / "whizorch"
"""The console script, as a user runs it (its sys.path does not hold the current directory)."""
EXIT_S = 20.0
"""Deadline for a role to exit after a signal (it takes about a second; before, it never did)."""

pytestmark = [pytest.mark.slow]


def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def role_argv(role: str, endpoints: str, ns: str, *extra: str) -> list[str]:
    argv = [str(WHIZORCH), role, "--app", "shop.sagas:app", "--app-dir", str(SHOP), "--etcd", endpoints,
            "--namespace", ns, "--lease-ttl", "2", *extra]  # fmt: skip
    return [*argv, "--region", "eu"] if role == "worker" else argv


def env(tmp: pathlib.Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WHIZORCH_") or k == "WHIZORCH_ETCD_BIN"}
    return {**clean, "SHOP_DB": str(tmp / "shop.db")}


@pytest.fixture
async def started() -> AsyncIterator[list[Child]]:
    async with children() as kids:
        yield kids


async def start(kids: list[Child], name: str, argv: list[str], tmp: pathlib.Path, cwd: pathlib.Path | None = None) -> Child:
    if cwd is not None:
        argv = ["/bin/sh", "-c", 'cd "$0" && exec "$@"', str(cwd), *argv]
    child = await Child.start(name, argv, env=env(tmp))
    kids.append(child)
    return child


async def stderr_says(child: Child, text: str, timeout: float = 30.0) -> None:
    await eventually_async(
        lambda: any(text in line for line in child.stderr), timeout=timeout,
        message=f"{child.name} never said {text!r}\n{child.describe()}",
    )  # fmt: skip


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
@pytest.mark.parametrize("role", ["worker", "orchestrator"])
async def test_a_role_that_never_reached_etcd_stops_on_a_signal(
    role: str, sig: signal.Signals, started: list[Child], tmp_path: pathlib.Path
) -> None:
    """With nothing listening at --etcd, the role says why and how to fix it, never says ready, and a signal ends it with status 0."""
    endpoint = f"127.0.0.1:{closed_port()}"
    child = await start(started, role, role_argv(role, endpoint, "lifecycle"), tmp_path)
    await stderr_says(child, f"cannot reach etcd at {endpoint} yet")
    line = next(line for line in child.stderr if "cannot reach etcd" in line)
    assert "--etcd HOST:PORT" in line and "WHIZORCH_ETCD_ENDPOINTS" in line and "[etcd] endpoints" in line
    child.send(sig)
    assert await child.wait_exit(EXIT_S) == 0
    assert child.events() == [], "ready although etcd never answered"
    assert any(f"{sig.name}: stopped before it was ready" in line for line in child.stderr), child.describe()


@pytest.mark.etcd_control
@pytest.mark.parametrize("role", ["worker", "orchestrator"])
async def test_ready_only_once_etcd_answered(
    role: str, etcd_single: LocalEtcdCluster, started: list[Child], tmp_path: pathlib.Path
) -> None:
    """With etcd frozen (it accepts connections, answers nothing) a role is not ready; once etcd answers, it is."""
    member = etcd_single.members[0]
    member.pause()
    try:
        child = await start(started, role, role_argv(role, ",".join(etcd_single.endpoints), "ready"), tmp_path)
        await stderr_says(child, "cannot reach etcd at")
        assert child.events() == [], f"ready before etcd answered\n{child.describe()}"
    finally:
        member.resume()
    ready = await child.next_event(f"{role}_ready", 30)
    assert ready["event"] == f"{role}_ready"
    child.send(signal.SIGTERM)
    assert await child.wait_exit(EXIT_S) == 0


@pytest.mark.parametrize("role", ["worker", "orchestrator"])
async def test_a_ready_role_stops_cleanly(
    role: str, etcd_endpoints: list[str], started: list[Child], tmp_path: pathlib.Path
) -> None:
    """SIGTERM to a ready role: a worker drains and reports it; an orchestrator resigns; both exit 0 and leave no key behind."""
    ns = f"lifecycle-{uuid.uuid4().hex[:8]}"
    child = await start(started, role, role_argv(role, ",".join(etcd_endpoints), ns), tmp_path)
    await child.next_event(f"{role}_ready", 30)
    async with EtcdClient(etcd_endpoints) as client:
        try:

            async def registered() -> bool:
                return (await client.get(f"{ns}/".encode(), prefix=True, count_only=True)).count >= 1

            await eventually_async(registered, timeout=30, message=f"{role} never wrote its key")
            child.send(signal.SIGTERM)
            assert await child.wait_exit(EXIT_S) == 0
            if role == "worker":
                assert child.events("worker_stopped") == [{"event": "worker_stopped", "region": "eu", "completed": 0}]
            left = await client.get(f"{ns}/".encode(), prefix=True)
            # its registration or candidacy went with its lease (revoked, not left to expire)
            assert [kv.key for kv in left.kvs if kv.lease] == []
        finally:
            await client.delete(f"{ns}/".encode(), prefix=True)


@pytest.mark.etcd_control
@pytest.mark.parametrize("role", ["worker", "orchestrator"])
async def test_a_role_whose_etcd_froze_still_stops(
    role: str, etcd_single: LocalEtcdCluster, started: list[Child], tmp_path: pathlib.Path
) -> None:
    """Ready, then etcd freezes: SIGTERM still ends the role with status 0 (its last writes cannot be answered; its lease ends by itself)."""
    child = await start(started, role, role_argv(role, ",".join(etcd_single.endpoints), "frozen"), tmp_path)
    await child.next_event(f"{role}_ready", 30)
    member = etcd_single.members[0]
    member.pause()
    try:
        child.send(signal.SIGTERM)
        assert await child.wait_exit(EXIT_S) == 0
    finally:
        member.resume()


SLOW_APP = textwrap.dedent(
    """
    import asyncio, pathlib
    from whizorch.saga import App, Saga

    slow = Saga("slow")

    @slow.step
    async def wait(ctx, marker):
        pathlib.Path(marker).write_text("started")
        await asyncio.sleep(3600)  # ok: a handler that does not end by itself

    app = App([slow])
    """
)


async def test_a_second_signal_stops_a_draining_worker_at_once(
    etcd_endpoints: list[str], started: list[Child], tmp_path: pathlib.Path
) -> None:
    """A worker draining a handler that does not end exits at once (status 0) on a second SIGTERM, saying so."""
    (tmp_path / "slowapp.py").write_text(SLOW_APP)
    ns = f"drain-{uuid.uuid4().hex[:8]}"
    endpoints = ",".join(etcd_endpoints)
    common = ["--app", "slowapp:app", "--etcd", endpoints, "--namespace", ns, "--lease-ttl", "2"]
    orch = await start(started, "orch", [str(WHIZORCH), "orchestrator", *common], tmp_path, cwd=tmp_path)
    worker = await start(
        started, "worker", [str(WHIZORCH), "worker", *common, "--region", "eu", "--drain-timeout", "600"], tmp_path,
        cwd=tmp_path,
    )  # fmt: skip
    await orch.next_event("orchestrator_ready", 30)
    await worker.next_event("worker_ready", 30)
    marker = tmp_path / "marker"
    async with EtcdClient(etcd_endpoints) as client, SagaClient(client, namespace=ns) as sagas:
        try:
            await sagas.submit("slow", str(marker), saga_id="slow-1")
            await eventually_async(marker.exists, timeout=30, message="the slow handler never started")
            worker.send(signal.SIGTERM)
            await stderr_says(worker, "SIGTERM: draining: no new step; 1 running handler may take up to 600s")
            assert worker.running, "the worker did not wait for its running handler"
            worker.send(signal.SIGTERM)
            assert await worker.wait_exit(EXIT_S) == 0
            assert any("stopping at once on a second signal" in line for line in worker.stderr), worker.describe()
        finally:
            await client.delete(f"{ns}/".encode(), prefix=True)


async def test_app_is_found_in_the_current_directory(started: list[Child], tmp_path: pathlib.Path) -> None:
    """The `whizorch` console script finds --app's module in the directory it runs from (as uvicorn and celery do)."""
    (tmp_path / "slowapp.py").write_text(SLOW_APP)
    child = await start(started, "check", [str(WHIZORCH), "check", "--app", "slowapp:app"], tmp_path, cwd=tmp_path)
    assert await child.wait_exit(60) == 0, child.describe()
    assert child.lines[-1][1] == "slowapp:app: 1 saga, 1 step; no configured regions (nothing to check against): ok"


async def test_a_command_that_cannot_reach_etcd_names_the_fix(started: list[Child], tmp_path: pathlib.Path) -> None:
    """`whizorch status` with nothing at --etcd: exit 2, one line naming the endpoint and the three ways to point at etcd."""
    endpoint = f"127.0.0.1:{closed_port()}"
    child = await start(started, "status", [str(WHIZORCH), "status", "--etcd", endpoint], tmp_path)
    assert await child.wait_exit(60) == 2
    (line,) = child.stderr
    assert line.startswith(f"whizorch: cannot reach etcd at {endpoint} (")
    assert "--etcd HOST:PORT" in line and "WHIZORCH_ETCD_ENDPOINTS" in line and "[etcd] endpoints in the config file" in line
