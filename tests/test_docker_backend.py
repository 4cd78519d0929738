"""The docker backend's pure parts: choosing the network mode, a member's command line."""

from __future__ import annotations

import pytest

from whizorch.errors import ConfigError
from whizorch.testing._docker import choose_network_mode, member_command


def test_auto_uses_the_bridge_when_the_engine_has_one() -> None:
    """A normal Docker (bridge, host, none) keeps the published-port path."""
    assert choose_network_mode("auto", ["bridge", "host", "none"]) == "bridge"


def test_auto_uses_host_networking_when_the_engine_has_no_bridge() -> None:
    """A dockerd --bridge=none has only host and none: members go on the host network."""
    assert choose_network_mode("auto", ["host", "none"]) == "host"


@pytest.mark.parametrize("mode", ["bridge", "host"])
def test_an_explicit_mode_wins_over_the_engine(mode: str) -> None:
    """--etcd-docker-network=bridge|host is taken as given, whatever networks exist."""
    assert choose_network_mode(mode, ["host", "none"]) == mode
    assert choose_network_mode(mode, ["bridge"]) == mode


def test_an_unknown_mode_is_a_config_error() -> None:
    """A typo names the allowed values instead of silently meaning auto."""
    with pytest.raises(ConfigError, match="auto, bridge, host"):
        choose_network_mode("overlay", ["bridge"])


def test_a_host_network_member_listens_on_loopback_only() -> None:
    """Every URL a host-network member listens on or advertises is on 127.0.0.1 and
    its own ports; extra flags come last so they override."""
    args = member_command(
        "etcd1",
        (2379, 2380, 2381),
        "etcd0=http://127.0.0.1:1,etcd1=http://127.0.0.1:2380",
        "tok",
        heartbeat_ms=50,
        election_ms=500,
        extra_args=["--election-timeout=900"],
    )
    flags = dict(arg.split("=", 1) for arg in args[1:])
    assert args[0] == "/usr/local/bin/etcd"
    assert flags["--listen-client-urls"] == flags["--advertise-client-urls"] == "http://127.0.0.1:2379"
    assert flags["--listen-peer-urls"] == flags["--initial-advertise-peer-urls"] == "http://127.0.0.1:2380"
    assert flags["--listen-metrics-urls"] == "http://127.0.0.1:2381"
    assert flags["--name"] == "etcd1" and flags["--initial-cluster-token"] == "tok"
    urls = [v for k, v in flags.items() if k.endswith("-urls")]
    assert all(url.startswith("http://127.0.0.1:") for url in urls), urls
    assert args[-1] == "--election-timeout=900"
