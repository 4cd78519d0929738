"""Shared fixtures for tests against real etcd (see whizorch.testing.pytest_plugin).

Every test gets a unique key prefix and a client on the module's shared cluster; the
prefix is deleted after the test. Tests that kill or pause members use the
``etcd_cluster`` fixture (a fresh 3-member cluster) instead.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from _engine import Engine, engine_on

from whizorch import EtcdClient


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return f"test/{uuid.uuid4().hex[:12]}/"


@pytest.fixture
async def client(etcd_endpoints: list[str], prefix: str) -> AsyncIterator[EtcdClient]:
    """An open client on the shared cluster; the test's prefix is deleted afterwards."""
    async with EtcdClient(etcd_endpoints, timeout_s=3.0, retry_deadline_s=5.0) as c:
        yield c
        await c.delete(prefix, prefix=True)


@pytest.fixture
async def other(etcd_endpoints: list[str]) -> AsyncIterator[EtcdClient]:
    """A second client on the shared cluster (an observer, or someone else acting)."""
    async with EtcdClient(list(reversed(etcd_endpoints)), timeout_s=3.0, retry_deadline_s=5.0) as c:
        yield c


@pytest.fixture
async def engine(client: EtcdClient, prefix: str, tmp_path: Path) -> AsyncIterator[Engine]:
    """Orchestrators, workers and a SagaClient in this test's event loop, on the shared
    cluster, in the test's own namespace (``_engine.py``)."""
    async with engine_on(client, prefix.rstrip("/"), tmp_path) as eng:
        yield eng
