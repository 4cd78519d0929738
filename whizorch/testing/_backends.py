"""Where the pytest fixtures get etcd from: local processes, a container, or given endpoints.

``testcontainers`` (and through it ``docker``) is imported only when the docker backend
is used, so the plugin loads without them.
"""

from __future__ import annotations

import gc
import os
import socket
import time
import uuid
import warnings
from collections.abc import Sequence
from typing import Any, Protocol

import attrs

from whizorch.errors import ConfigError
from whizorch.testing._member import ClusterUnhealthyError, http_get, is_healthy
from whizorch.testing._tls import TLSFiles

__all__ = [
    "BACKENDS",
    "DEFAULT_IMAGE",
    "BackendUnavailableError",
    "DockerEtcd",
    "EtcdService",
    "RemoteEtcd",
    "docker_networks",
    "docker_unavailable_reason",
    "parse_endpoints",
    "start_docker_etcd",
]

BACKENDS = ("local", "docker", "external")
DEFAULT_IMAGE = "quay.io/coreos/etcd:v3.5.17"
_CLIENT_PORT = 2379
_METRICS_PORT = 2381
_DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


class BackendUnavailableError(Exception):
    """The backend cannot run here (no Docker engine, testcontainers missing): skip."""


class EtcdService(Protocol):
    """What every backend offers a test: where to connect, and with which TLS files."""

    @property
    def endpoints(self) -> list[str]:
        """Client endpoints without scheme, ``"host:port"``."""
        ...

    @property
    def client_urls(self) -> list[str]:
        """Client endpoints with scheme."""
        ...

    @property
    def tls(self) -> TLSFiles | None:
        """TLS files for the client, if the service needs TLS."""
        ...


@attrs.frozen
class RemoteEtcd:
    """An etcd the fixtures do not control (``--etcd-backend=external``)."""

    endpoints: list[str]
    """Client endpoints without scheme."""
    client_urls: list[str]
    """Client endpoints with scheme."""
    tls: TLSFiles | None = None
    """Always ``None``: TLS to an external etcd is configured by the test itself."""


def parse_endpoints(text: str) -> RemoteEtcd:
    """Parse ``"host:port,https://host:port"`` into a `RemoteEtcd`."""
    endpoints: list[str] = []
    urls: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        scheme, sep, rest = item.partition("://")
        if not sep:
            scheme, rest = "http", item
        rest = rest.rstrip("/")
        if ":" not in rest or scheme not in ("http", "https"):
            raise ConfigError(
                "an etcd endpoint must look like host:port or http(s)://host:port", endpoint=item
            )
        endpoints.append(rest)
        urls.append(f"{scheme}://{rest}")
    if not endpoints:
        raise ConfigError("no etcd endpoints given", endpoints=text)
    return RemoteEtcd(endpoints=endpoints, client_urls=urls)


class DockerEtcd:
    """A single-member etcd in a container (``--etcd-backend=docker``)."""

    def __init__(self, container: Any, host: str, client_port: int, metrics_port: int) -> None:
        self._container = container
        self.host = host
        """The host the container's ports are published on."""
        self.client_port = client_port
        """Published client port."""
        self.metrics_port = metrics_port
        """Published metrics port (``/health``)."""

    @property
    def endpoints(self) -> list[str]:
        """The one client endpoint, ``"host:port"``."""
        return [f"{self.host}:{self.client_port}"]

    @property
    def client_urls(self) -> list[str]:
        """The one client URL, ``"http://host:port"``."""
        return [f"http://{self.host}:{self.client_port}"]

    @property
    def tls(self) -> TLSFiles | None:
        """Always ``None``: the container serves plain HTTP."""
        return None

    def health(self, timeout: float = 1.0) -> bool:
        """Whether the member reports ``{"health": "true"}``."""
        return is_healthy(http_get(self.metrics_port, "/health", timeout, host=self.host))

    def logs(self) -> str:
        """The container's output."""
        stdout, stderr = self._container.get_logs()
        return bytes(stdout + stderr).decode("utf-8", errors="replace")

    def close(self) -> None:
        """Remove the container."""
        self._container.stop()


def _docker_where() -> str:
    try:
        from testcontainers.core.docker_client import get_docker_host
    except ImportError:  # pragma: no cover - older testcontainers
        return os.environ.get("DOCKER_HOST") or _DEFAULT_DOCKER_HOST
    return get_docker_host() or _DEFAULT_DOCKER_HOST


def _probe(where: str) -> str | None:
    """Connect to a unix:// or tcp:// Docker host; the error text when nothing listens."""
    scheme, _, rest = where.partition("://")
    try:
        if scheme == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(rest)
        elif scheme == "tcp":
            host, _, port = rest.rstrip("/").rpartition(":")
            with socket.create_connection((host, int(port)), timeout=5):
                pass
    except (OSError, ValueError) as exc:
        return str(exc)
    return None


def docker_unavailable_reason() -> str | None:
    """Why containers cannot run here (no testcontainers, no engine), or ``None``."""
    try:
        from testcontainers.core.docker_client import DockerClient
    except ImportError as exc:
        return (
            f"the docker etcd backend needs testcontainers (pip install 'whizorch[testing]'): {exc}"
        )
    where = _docker_where()
    # a plain connect first: a failed docker-py client leaves an unclosed socket behind,
    # which warnings-as-errors turns into a failure of whichever test collects it
    refused = _probe(where)
    if refused is not None:
        return f"no Docker engine answered at {where}: {refused}"
    reason = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            # docker-py asks the engine for its API version on construction
            client = DockerClient(timeout=10).client
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:
            reason = f"no Docker engine answered at {where}: {exc}"
        gc.collect()
    return reason


def docker_networks() -> list[str]:
    """The names of the engine's networks (``bridge``, ``host``, ``none`` ... on a normal
    Docker; no ``bridge`` on a ``dockerd --bridge=none``)."""
    from testcontainers.core.docker_client import DockerClient

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        client = DockerClient(timeout=10).client
        try:
            return [str(network.name) for network in client.networks.list()]
        finally:
            client.close()


def start_docker_etcd(
    image: str = DEFAULT_IMAGE,
    *,
    heartbeat_ms: int = 50,
    election_ms: int = 500,
    timeout: float = 120.0,
    extra_args: Sequence[str] = (),
) -> DockerEtcd:
    """Start a single-member etcd container, its ports published (the bridge network),
    and wait until it is healthy.

    Raises `BackendUnavailableError` when testcontainers is missing or no Docker engine
    answers (the fixtures turn that into a skip), `ClusterUnhealthyError` when the
    container does not become healthy in time.
    """
    reason = docker_unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(reason)
    from testcontainers.core.container import DockerContainer

    command = [
        "/usr/local/bin/etcd",
        "--name=etcd0",
        "--data-dir=/etcd-data",
        f"--listen-client-urls=http://0.0.0.0:{_CLIENT_PORT}",
        f"--advertise-client-urls=http://127.0.0.1:{_CLIENT_PORT}",
        "--listen-peer-urls=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls=http://127.0.0.1:2380",
        "--initial-cluster=etcd0=http://127.0.0.1:2380",
        "--initial-cluster-state=new",
        f"--initial-cluster-token=whizorch-{uuid.uuid4().hex[:16]}",
        f"--listen-metrics-urls=http://0.0.0.0:{_METRICS_PORT}",
        f"--heartbeat-interval={heartbeat_ms}",
        f"--election-timeout={election_ms}",
        *extra_args,
    ]
    container = (
        DockerContainer(image)
        .with_command(command)
        .with_exposed_ports(_CLIENT_PORT, _METRICS_PORT)
        .with_tmpfs_mount("/etcd-data")
    )
    container.start()
    try:
        service = DockerEtcd(
            container,
            container.get_container_host_ip(),
            int(container.get_exposed_port(_CLIENT_PORT)),
            int(container.get_exposed_port(_METRICS_PORT)),
        )
        deadline = time.monotonic() + timeout
        while not service.health():
            container.reload()
            if container.status in ("exited", "dead"):
                raise ClusterUnhealthyError(
                    f"etcd in container {image} exited; its output:\n{service.logs()[-4000:]}",
                    image=image,
                )
            if time.monotonic() >= deadline:
                raise ClusterUnhealthyError(
                    f"etcd in container {image} not healthy within {timeout:.0f}s; "
                    f"its output:\n{service.logs()[-4000:]}",
                    image=image,
                )
            time.sleep(0.1)
    except BaseException:
        container.stop()
        raise
    return service
