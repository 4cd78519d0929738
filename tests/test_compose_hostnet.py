"""compose/docker-compose.hostnet.yml, the host-network smoke run CI makes of compose/:
the same deployment, on distinct loopback addresses, reaching nothing else."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

COMPOSE_DIR = Path(__file__).resolve().parent.parent / "compose"


class _Loader(yaml.SafeLoader):
    """YAML with Compose's ``!reset`` tag (drop what the base file set)."""


_Loader.add_constructor("!reset", lambda loader, node: {"!reset": True})


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.load((COMPOSE_DIR / name).read_text(), Loader=_Loader)
    return data


BASE = _load("docker-compose.yml")["services"]
HOSTNET = _load("docker-compose.hostnet.yml")["services"]
MEMBERS = sorted(name for name in BASE if name.startswith("etcd"))
ROLES = sorted(name for name in BASE if "build" in BASE[name])


def _flags(command: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in command[1:] if "=" in arg)


def _member_address(name: str) -> str:
    url = _flags(HOSTNET[name]["command"])["--listen-client-urls"]
    host = re.fullmatch(r"http://([\d.]+):2379", url)
    assert host, f"{name}: --listen-client-urls {url}"
    return host.group(1)


def _role_address(name: str) -> str:
    return str(HOSTNET[name]["environment"]["WHIZORCH_MONITORING_METRICS_BIND"]).rpartition(":")[0]


def test_it_overrides_every_service_and_adds_none() -> None:
    """The smoke run is the whole deployment of docker-compose.yml, nothing more."""
    assert sorted(HOSTNET) == sorted(BASE)


def test_every_container_uses_the_host_network_on_its_own_loopback_address() -> None:
    """No bridge is needed: every service is on the host network, members and roles each
    on a distinct 127.0.0.x address (never 127.0.0.1, which the tests' etcd uses)."""
    addresses = [_member_address(m) for m in MEMBERS] + [_role_address(r) for r in ROLES]
    assert all(HOSTNET[name].get("network_mode") == "host" for name in HOSTNET)
    for address in addresses:
        assert ipaddress.ip_address(address).is_loopback and address != "127.0.0.1", address
    assert len(set(addresses)) == len(addresses), addresses


def test_members_run_the_base_files_cluster_with_loopback_addresses() -> None:
    """Each member's flags are docker-compose.yml's with the service names and 0.0.0.0
    replaced by the members' addresses: the same cluster, reachable from the host."""
    address = {m: _member_address(m) for m in MEMBERS}
    for member in MEMBERS:
        base = _flags(BASE[member]["command"])
        expected = {}
        for flag, value in base.items():
            value = value.replace("0.0.0.0", address[member])
            for other, addr in address.items():
                value = value.replace(f"//{other}:", f"//{addr}:")
            expected[flag] = value
        assert _flags(HOSTNET[member]["command"]) == expected, member
        health = HOSTNET[member]["healthcheck"]["test"]
        assert f"--endpoints=http://{address[member]}:2379" in health, health


def test_nothing_is_published_or_needs_a_name() -> None:
    """etcd1's published port and the roles' hostnames and exposed ports are reset (the
    host network has no port publishing, and Docker refuses a hostname there)."""
    assert HOSTNET["etcd1"]["ports"] == {"!reset": True}
    for role in ROLES:
        assert HOSTNET[role]["hostname"] == {"!reset": True}, role
        assert HOSTNET[role]["expose"] == {"!reset": True}, role


def test_the_roles_image_builds_from_a_loopback_wheelhouse_only() -> None:
    """The build runs on the host network with pip's index off and a find-links URL that
    the script serves on 127.0.0.1."""
    for role in ROLES:
        build = HOSTNET[role]["build"]
        assert build["network"] == "host", role
        assert build["args"]["PIP_NO_INDEX"] == "1", role
        assert "WHIZORCH_COMPOSE_WHEELHOUSE" in build["args"]["PIP_FIND_LINKS"], role


def test_orchestrators_have_distinct_ids() -> None:
    """On the host network both share the host's name (and maybe a pid): --id tells them apart."""
    ids = {r: _flags(HOSTNET[r]["command"]).get("--id") for r in ROLES if "orchestrator" in r}
    assert len(set(ids.values())) == len(ids) and None not in ids.values(), ids
    for role in ids:
        assert [a for a in HOSTNET[role]["command"] if not a.startswith("--id=")] == BASE[role]["command"]


def test_the_hostnet_config_is_whizorch_toml_with_loopback_endpoints() -> None:
    """whizorch.hostnet.toml differs from whizorch.toml only in the members' addresses
    (and a loopback metrics address, which each role's environment sets anyway)."""
    base = tomllib.loads((COMPOSE_DIR / "whizorch.toml").read_text())
    hostnet = tomllib.loads((COMPOSE_DIR / "whizorch.hostnet.toml").read_text())
    text = (COMPOSE_DIR / "whizorch.toml").read_text()
    for member in MEMBERS:
        text = text.replace(f'"{member}:2379"', f'"{_member_address(member)}:2379"')
    expected = tomllib.loads(text)
    expected["monitoring"]["metrics_bind"] = hostnet["monitoring"]["metrics_bind"]
    assert hostnet == expected
    assert base["etcd"]["endpoints"] != hostnet["etcd"]["endpoints"]
    assert ipaddress.ip_address(hostnet["monitoring"]["metrics_bind"].rpartition(":")[0]).is_loopback
