"""``whizorch worker`` / ``whizorch orchestrator`` as processes configured by a TOML file:
their /metrics endpoints scraped over HTTP, a user's ``--middleware`` running in each,
and configuration errors that stop a role with one line naming the field.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import saga_apps as apps
from _children import Child, children
from prometheus_client.parser import text_string_to_metric_families

from whizorch import EtcdClient
from whizorch.saga import SagaClient

pytestmark = pytest.mark.etcd34

HERE = Path(__file__).resolve().parent


def env_for(directory: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHIZORCH_") or k == "WHIZORCH_ETCD_BIN"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
    env[apps.DIR_ENV] = str(directory)
    env.update(extra)
    return env


def write_config(directory: Path, endpoints: list[str], namespace: str) -> Path:
    path = directory / "whizorch.toml"
    path.write_text(f"""
namespace = "{namespace}"

[etcd]
endpoints = {json.dumps(endpoints)}

[consensus]
lease_ttl_s = 2

[failover]
policy = "closest"

[monitoring]
metrics = true
metrics_bind = "127.0.0.1:0"

[regions.eu]
latency_ms = {{ us = 80 }}
compliance = ["gdpr"]
cost = 2.0

[regions.us]
latency_ms = {{ eu = 80 }}
""")
    return path


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def namespace() -> str:
    return f"roles-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def cleanup(etcd_endpoints: list[str], namespace: str) -> AsyncIterator[EtcdClient]:
    async with EtcdClient(etcd_endpoints, timeout_s=3.0) as client:
        yield client
        await client.delete(namespace + "/", prefix=True)


async def role(started: list[Child], name: str, argv: list[str], env: dict[str, str], ready: str) -> tuple[Child, dict[str, Any]]:
    child = await Child.start(name, [sys.executable, "-m", "whizorch", *argv], env=env)
    started.append(child)
    return child, await child.next_event(ready, 30)


async def test_configured_roles_serve_metrics_and_run_user_middleware(
    etcd_endpoints: list[str], namespace: str, cleanup: EtcdClient, tmp_path: Path
) -> None:
    """Roles read etcd, namespace, TTL, region tags and metrics from --config; /metrics and --middleware work per process."""
    config = write_config(tmp_path, etcd_endpoints, namespace)
    env = env_for(tmp_path)
    common = ["--config", str(config), "--app", "saga_apps:app", "--middleware", "saga_apps:audit"]
    async with children() as started:
        _, eu = await role(started, "eu", ["worker", *common, "--region", "eu", "--id", "w-eu"], env, "worker_ready")
        _, us = await role(started, "us", ["worker", *common, "--region", "us", "--id", "w-us"], env, "worker_ready")
        _, orch = await role(started, "orch", ["orchestrator", *common, "--id", "o-1", "--events"], env, "orchestrator_ready")
        assert all(e["metrics"].startswith("http://127.0.0.1:") for e in (eu, us, orch))

        # the worker registered what the config says about its region
        regions = await cleanup.get(f"{namespace}/region/eu/", prefix=True)
        (caps,) = [json.loads(kv.value) for kv in regions.kvs]
        assert (caps["compliance"], caps["cost"], caps["worker"]) == (["gdpr"], 2.0, "w-eu")
        (lease,) = {kv.lease for kv in regions.kvs}
        info = await cleanup.lease_time_to_live(lease)
        assert info is not None and info.granted_ttl == 2

        async with SagaClient(cleanup, namespace=namespace) as sagas:
            done = await sagas.execute(apps.geo, {}, saga_id="cfg-1", timeout_s=30)
        assert done.ok and done.regions == ["eu"]

        orch_metrics = await asyncio.to_thread(scrape, orch["metrics"])
        eu_metrics = await asyncio.to_thread(scrape, eu["metrics"])
    assert sample(orch_metrics, "whizorch_sagas_total", saga_type="geo", outcome="completed") == 1
    assert sample(orch_metrics, "whizorch_is_leader") == 1
    assert sample(orch_metrics, "whizorch_consensus_operation_duration_seconds_count", operation="Txn") > 0
    for step in "abcd":
        assert sample(eu_metrics, "whizorch_step_attempts_total", saga_type="geo", step=step, region="eu", kind="run", outcome="ok") == 1
    assert sample(eu_metrics, "whizorch_is_leader") == 0
    assert sample(eu_metrics, "whizorch_consensus_operation_duration_seconds_count", operation="LeaseKeepAlive") >= 0

    logged = [json.loads(line) for line in (tmp_path / apps.MIDDLEWARE_LOG).read_text().splitlines()]
    steps = [e for e in logged if e["kind"] == "step" and e["saga_id"] == "cfg-1"]
    assert sorted(e["step"] for e in steps) == ["a", "b", "c", "d"] and {e["outcome"] for e in steps} == {"ok"}
    events = [e["event"] for e in logged if e["kind"] == "SagaEvent" and e["saga_id"] == "cfg-1"]
    assert events[0] == "adopt" and events.count("result") == 4


@pytest.mark.parametrize(
    ("setup", "expect"),
    [
        ({"toml": "[consensus]\nlease_ttl_s = 0\n"}, ["consensus.lease_ttl_s = 0", "whizorch.toml"]),
        ({"toml": "[consensus]\nlease_ttl = 5\n"}, ["consensus.lease_ttl", "did you mean consensus.lease_ttl_s"]),
        ({"env": {"WHIZORCH_CONSENSUS_LEASE_TTL_S": "soon"}}, ["consensus.lease_ttl_s", "'soon'", "WHIZORCH_CONSENSUS_LEASE_TTL_S"]),
        ({"env": {"WHIZORCH_MONITORING_METRICS_BIND": "9464"}}, ["monitoring.metrics_bind", "'9464'"]),
        ({"env": {"WHIZORCH_FAILOVER_POLICY": "nearest"}}, ["failover.policy", "'nearest'"]),
        ({"args": ["--middleware", "saga_apps:nope"]}, ["middleware", "no attribute 'nope'"]),
        ({"args": ["--config", "/nonexistent/whizorch.toml"]}, ["/nonexistent/whizorch.toml"]),
    ],
)
def test_bad_configuration_stops_a_role_with_one_line_naming_the_field(
    tmp_path: Path, setup: dict[str, Any], expect: list[str]
) -> None:
    """A role given bad configuration exits 2 at once with a message naming the field and value, no traceback."""
    args = list(setup.get("args", []))
    if "toml" in setup:
        path = tmp_path / "whizorch.toml"
        path.write_text(setup["toml"])
        args += ["--config", str(path)]
    proc = subprocess.run(
        [sys.executable, "-m", "whizorch", "worker", "--app", "saga_apps:app", "--region", "eu", *args],
        env=env_for(tmp_path, **setup.get("env", {})), capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for text in expect:
        assert text in proc.stderr, proc.stderr
