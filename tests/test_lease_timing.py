"""LeaseTiming: one checked shape from the configuration to the roles and the grant."""

from __future__ import annotations

import pytest

from whizorch import ConfigError, EtcdClient
from whizorch.config import ConsensusConfig
from whizorch.coord import LeaseTiming, Session
from whizorch.saga import App, Orchestrator, Saga, Worker

NOOP = Saga("noop")


@NOOP.step()
async def only(ctx: object, value: object) -> None:
    return None


APP = App([NOOP])


def client() -> EtcdClient:
    return EtcdClient("127.0.0.1:2379")


def test_defaults_are_filled_and_the_object_checks_itself() -> None:
    """of() fills a margin of TTL/5 and a keepalive of TTL/3; a LeaseTiming built
    directly is checked the same way, naming the field and the reason."""
    assert LeaseTiming.of(6) == LeaseTiming(6, 1.2, 2.0)
    with pytest.raises(ConfigError) as info:
        LeaseTiming(3, 1.0, 2.0)
    assert info.value.field == "keepalive_interval_s" and info.value.reason is not None
    assert "shorter than TTL - step_down_margin_s = 2" in str(info.value)
    with pytest.raises(ConfigError) as info:
        LeaseTiming.of(5, step_down_margin_s=4)
    assert info.value.field == "step_down_margin_s" and "default keepalive_interval_s" in str(info.value)


def test_the_configs_lease_reaches_the_roles_and_their_sessions_whole() -> None:
    """ConsensusConfig.lease is built once; Worker and Orchestrator keep that very object
    and open their sessions with it."""
    lease = ConsensusConfig(lease_ttl_s=4, step_down_margin_s=0.5).lease
    worker = Worker(client(), APP, region="eu", lease=lease)
    orch = Orchestrator(client(), APP, lease=lease)
    assert worker.lease is lease and orch.lease is lease and orch.lease_ttl_s == 4
    assert Session(client(), timing=worker.lease).timing is lease


def test_a_role_takes_the_timing_once() -> None:
    """A role given ``lease`` and a ``lease_ttl_s`` too refuses, naming the second;
    without either it uses a TTL of 5 s."""
    with pytest.raises(ConfigError, match="pass the lease timing once") as info:
        Worker(client(), APP, region="eu", lease=LeaseTiming.of(3), lease_ttl_s=3)
    assert info.value.field == "lease_ttl_s"
    assert Orchestrator(client(), APP).lease == LeaseTiming.of(5)
    assert Worker(client(), APP, region="eu", lease_ttl_s=2).lease == LeaseTiming.of(2)
