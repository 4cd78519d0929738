"""The per-region etcd roles (whizorch.saga.roles): what each role may read and write."""

from __future__ import annotations

import pytest

from whizorch.errors import ConfigError
from whizorch.etcd import prefix_end
from whizorch.etcd.auth import Permission, PermType
from whizorch.saga._keys import Keys
from whizorch.saga.roles import (
    RoleKind,
    RoleSpec,
    allows,
    check_region,
    deployment_roles,
    describe,
    role_name,
)

NS = "ws"
LEASE = 0x694D99FAFEA88404


def _roles(regions: tuple[str, ...] = ("eu", "us")) -> dict[str, RoleSpec]:
    return {r.name: r for r in deployment_roles(NS, regions)}


def _can(role: RoleSpec, key: str, *, write: bool) -> bool:
    return allows(role.permissions, key.encode(), write=write)


def test_names_and_kinds() -> None:
    """One role per process kind plus one worker role per region, named after the namespace."""
    roles = deployment_roles(NS, ["eu", "us", "ap"])
    assert [(r.name, r.kind, r.region) for r in roles] == [
        ("ws-orchestrator", RoleKind.ORCHESTRATOR, None),
        ("ws-client", RoleKind.CLIENT, None),
        ("ws-viewer", RoleKind.VIEWER, None),
        ("ws-console", RoleKind.CONSOLE, None),
        ("ws-worker-eu", RoleKind.WORKER, "eu"),
        ("ws-worker-us", RoleKind.WORKER, "us"),
        ("ws-worker-ap", RoleKind.WORKER, "ap"),
    ]


def test_worker_permissions_exactly() -> None:
    """A worker role holds exactly its region's task, run and region prefixes, and read on run/."""
    eu = _roles()["ws-worker-eu"]
    assert [describe(p) for p in eu.permissions] == [
        {"type": "READWRITE", "prefix": "ws/task/eu/"},
        {"type": "READWRITE", "prefix": "ws/run/eu/"},
        {"type": "READ", "prefix": "ws/run/"},
        {"type": "READWRITE", "prefix": "ws/region/eu/"},
    ]
    assert all(p.range_end == prefix_end(p.key) for p in eu.permissions)


# (key, what the eu worker may do: "rw", "r" or "")
WORKER_EU = [
    (f"ws/task/eu/{LEASE:x}/s1/0/step-1", "rw"),
    ("ws/run/eu/s1/0/step-1", "rw"),
    (f"ws/region/eu/{LEASE:x}", "rw"),
    ("ws/run/us/s1/1/step-1", "r"),  # an earlier step's output, by reference
    (f"ws/task/us/{LEASE:x}/s1/1/step-1", ""),
    (f"ws/region/us/{LEASE:x}", ""),
    ("ws/task/eu-west/x/s1/0/step-1", ""),  # a region whose name starts like ours
    ("ws/run/eu-west/s1/0/step-1", "r"),
    ("ws/region/eu-west/1", ""),
    ("ws/saga/s1", ""),
    ("ws/submit/s1", ""),
    ("ws/cancel/s1", ""),
    (f"ws/leader/{LEASE:x}", ""),
    ("ws/ids", ""),
    ("ws/latency", ""),
    ("ws/quarantine/ab", ""),
    ("other/task/eu/x", ""),
    ("ws/task/eu", ""),  # the prefix's parent without its slash
]


@pytest.mark.parametrize(("key", "may"), WORKER_EU)
def test_worker_of_eu_reaches_only_its_region(key: str, may: str) -> None:
    """The eu worker reads and writes only its region's keys, and reads results of any region."""
    eu = _roles()["ws-worker-eu"]
    assert (_can(eu, key, write=False), _can(eu, key, write=True)) == ("r" in may, "w" in may)


CLIENT = [
    ("ws/submit/s1", "rw"),
    ("ws/cancel/s1", "rw"),
    ("ws/saga/s1", "r"),
    ("ws/run/eu/s1/0/step-1", "r"),
    ("ws/input/s1", "r"),
    ("ws/task/eu/x/s1/0/step-1", ""),
    ("ws/region/eu/1", ""),
    ("ws/leader/1", ""),
    ("ws/ids", ""),
]


@pytest.mark.parametrize(("key", "may"), CLIENT)
def test_client_submits_cancels_and_reads_outcomes(key: str, may: str) -> None:
    """The client role writes submissions and cancels, reads records, results and adopted inputs, nothing else."""
    client = _roles()["ws-client"]
    assert (_can(client, key, write=False), _can(client, key, write=True)) == ("r" in may, "w" in may)


def test_orchestrator_and_viewer_span_the_namespace_only() -> None:
    """The orchestrator reads and writes the whole namespace, the viewer reads it; neither goes outside."""
    roles = _roles()
    orch, viewer = roles["ws-orchestrator"], roles["ws-viewer"]
    for key in ("ws/saga/s1", "ws/leader/1", "ws/task/us/1/s/0/step-1", "ws/ids"):
        assert _can(orch, key, write=True) and _can(orch, key, write=False)
        assert _can(viewer, key, write=False) and not _can(viewer, key, write=True)
    for key in ("ws", "wsx/saga/s1", "other/x"):
        assert not _can(orch, key, write=False) and not _can(viewer, key, write=False)


def test_console_reads_the_namespace_and_writes_only_submissions_and_cancels() -> None:
    """The console role reads the whole namespace and writes only submit/ and cancel/ (its two actions)."""
    console = _roles()["ws-console"]
    for key in ("ws/saga/s1", "ws/leader/1", "ws/task/us/1/s/0/step-1", "ws/run/eu/s1/0/run-1", "ws/submitx"):
        assert _can(console, key, write=False) and not _can(console, key, write=True)
    for key in ("ws/submit/s2", "ws/cancel/s1"):
        assert _can(console, key, write=False) and _can(console, key, write=True)
    for key in ("ws", "wsx/saga/s1", "other/x"):
        assert not _can(console, key, write=False) and not _can(console, key, write=True)


def test_the_current_key_layout_falls_inside_the_worker_role() -> None:
    """Keys the saga layer builds for a region (tasks, registration) are in that region's worker role."""
    keys, eu = Keys(NS), _roles()["ws-worker-eu"]
    assert allows(eu.permissions, keys.region_tasks("eu") + b"x", write=True)
    assert allows(eu.permissions, keys.region("eu", LEASE), write=True)
    assert not allows(eu.permissions, keys.region("us", LEASE), write=True)
    # v2: the task on the worker's lease, its watch prefix, its result; never another region's
    task = keys.task("eu", f"{LEASE:x}", "s1", 0, "run", 1)
    assert allows(eu.permissions, task, write=True) and allows(eu.permissions, keys.worker_tasks("eu", LEASE), write=False)
    assert allows(eu.permissions, keys.result("eu", "s1", 0, "run", 1), write=True)
    assert allows(eu.permissions, keys.result("us", "s1", 0, "run", 1), write=False)  # outputs by reference
    assert not allows(eu.permissions, keys.result("us", "s1", 0, "run", 1), write=True)
    assert not allows(eu.permissions, keys.task("us", f"{LEASE:x}", "s1", 0, "run", 1), write=False)
    for key in (keys.saga("s1"), keys.submit("s1"), keys.cancel("s1"), keys.leader.encode() + b"/1"):
        assert not allows(eu.permissions, key, write=False)


@pytest.mark.parametrize(
    ("regions", "match"),
    [
        ((), "at least one region"),
        (("",), "non-empty"),
        (("eu/west",), "'/'"),
        (("eu west",), "' '"),
        (("eu,us",), "','"),
        (("eu", "us", "eu"), "named twice"),
    ],
)
def test_bad_regions_are_refused_with_their_name(regions: tuple[str, ...], match: str) -> None:
    """An empty, duplicated or slash-bearing region is a ConfigError that says what is wrong."""
    with pytest.raises(ConfigError, match=match):
        deployment_roles(NS, regions)


@pytest.mark.parametrize("namespace", ["", "ws/"])
def test_bad_namespaces_are_refused(namespace: str) -> None:
    """An empty namespace or one ending in '/' is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="namespace"):
        deployment_roles(namespace, ["eu"])


def test_role_name_rules() -> None:
    """Only a worker role names a region; check_region returns a good name unchanged."""
    assert role_name("ns", RoleKind.WORKER, "eu") == "ns-worker-eu"
    assert role_name("ns", RoleKind.VIEWER) == "ns-viewer"
    with pytest.raises(ConfigError):
        role_name("ns", RoleKind.WORKER)
    with pytest.raises(ConfigError):
        role_name("ns", RoleKind.CLIENT, "eu")
    assert check_region("eu-1") == "eu-1"


def test_allows_and_describe_single_keys_and_ranges() -> None:
    """A permission without range_end is one key; any other range is shown as key and range_end."""
    one = Permission(PermType.WRITE, b"a/b")
    assert allows([one], b"a/b", write=True) and not allows([one], b"a/b", write=False)
    assert not allows([one], b"a/bc", write=True)
    assert describe(one) == {"type": "WRITE", "key": "a/b"}
    span = Permission(PermType.READ, b"a", b"c")
    assert allows([span], b"b", write=False) and not allows([span], b"c", write=False)
    assert describe(span) == {"type": "READ", "key": "a", "range_end": "c"}
