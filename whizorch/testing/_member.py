"""One etcd process of a `LocalEtcdCluster`: start, stop, kill, pause, health."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from whizorch.errors import WhizorchError
from whizorch.testing._process import log_tail, spawn

if TYPE_CHECKING:
    from whizorch.testing._cluster import LocalEtcdCluster

__all__ = ["ClusterUnhealthyError", "EtcdMember", "LocalClusterError"]

LOOPBACK = "127.0.0.1"
_IS_LEADER_RE = re.compile(rb"^etcd_server_is_leader\s+(\S+)\s*$", re.MULTILINE)
_STOP_TIMEOUT_S = 10.0


class LocalClusterError(WhizorchError, RuntimeError):
    """A local etcd member failed to start, exited unexpectedly or could not be controlled.

    ``member`` names the member to blame, when there is one, and the message ends with
    the last lines of its log (and the log's path).
    """


class ClusterUnhealthyError(LocalClusterError, TimeoutError):
    """Members did not report ``{"health":"true"}`` before the deadline."""


def _etcd_env() -> dict[str, str]:
    # etcd reads ETCD_* variables as flags and refuses ones a flag shadows
    # (ETCD_UNSUPPORTED_ARCH excepted: a host may need it to run etcd at all); and a
    # member must not tell a service manager that it is the service that became ready
    return {
        k: v
        for k, v in os.environ.items()
        if (not k.startswith("ETCD_") or k == "ETCD_UNSUPPORTED_ARCH") and k != "NOTIFY_SOCKET"
    }


def http_get(
    port: int, path: str, timeout: float, host: str = LOOPBACK
) -> tuple[int, bytes] | None:
    """GET ``path``: ``(status, body)``, or ``None`` when nothing answered."""
    # http.client rather than urllib: no proxy from the environment may intercept
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def is_healthy(answer: tuple[int, bytes] | None) -> bool:
    """Whether a ``/health`` answer says ``{"health": "true"}``."""
    if answer is None:
        return False
    try:
        body = json.loads(answer[1])
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("health") == "true"


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may contain spaces
    return stat.rpartition(")")[2].split()[0]


class MemberURLs:
    """A member's addresses from its host, scheme and ports."""

    client_port: int
    peer_port: int
    metrics_port: int

    @property
    def host(self) -> str:  # pragma: no cover - each member says
        raise NotImplementedError

    @property
    def scheme(self) -> str:
        """The client URL's scheme (``http`` unless the member serves TLS)."""
        return "http"

    @property
    def endpoint(self) -> str:
        """The client endpoint without scheme, ``"HOST:PORT"``."""
        return f"{self.host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        """The client URL with scheme."""
        return f"{self.scheme}://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        """The peer URL (plain HTTP)."""
        return f"http://{self.host}:{self.peer_port}"

    @property
    def metrics_url(self) -> str:
        """The plain-HTTP metrics URL (``/health``, ``/metrics``), even with TLS."""
        return f"http://{self.host}:{self.metrics_port}"


class EtcdMember(MemberURLs):
    """One member of a `LocalEtcdCluster`, listening on 127.0.0.1 only.

    Ports and data directory stay the same across `stop`/`kill` and `restart`.
    """

    def __init__(
        self,
        cluster: LocalEtcdCluster,
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
        """Port of the client (gRPC) URL."""
        self.peer_port = peer_port
        """Port of the peer (Raft) URL."""
        self.metrics_port = metrics_port
        """Port of the plain-HTTP metrics URL, which serves ``/health`` and ``/metrics``."""
        self._process: subprocess.Popen[bytes] | None = None
        self._wanted = False  # True from start until stop/kill: an exit is a crash
        self._paused = False
        self._log_offset = 0

    def __repr__(self) -> str:
        state = "paused" if self.is_paused else "running" if self.is_running else "stopped"
        return f"<EtcdMember {self.name} {self.endpoint} {state}>"

    # -- addresses and files ----------------------------------------------------------

    @property
    def host(self) -> str:
        """The address the member listens on."""
        return LOOPBACK

    @property
    def scheme(self) -> str:
        """``https`` when the cluster uses TLS."""
        return self._cluster.scheme

    @property
    def data_dir(self) -> Path:
        """The member's ``--data-dir``."""
        return self._cluster.directory / f"{self.name}.etcd"

    @property
    def log_path(self) -> Path:
        """File receiving the member's stdout and stderr (appended across restarts)."""
        return self._cluster.directory / f"{self.name}.log"

    def log_tail(self, lines: int | None = None) -> list[str]:
        """The last lines of the member's log (default: the cluster's ``log_lines``)."""
        return log_tail(self.log_path, lines or self._cluster.log_lines)

    @property
    def args(self) -> tuple[str, ...]:
        """The etcd command line this member runs with."""
        cluster = self._cluster
        args = [
            str(cluster.etcd_bin),
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--listen-metrics-urls={self.metrics_url}",
            f"--initial-cluster={cluster.initial_cluster}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={cluster.token}",
            f"--heartbeat-interval={cluster.heartbeat_ms}",
            f"--election-timeout={cluster.election_ms}",
            "--logger=zap",
            "--log-outputs=stderr",
        ]
        tls = cluster.tls
        if tls is not None:
            args += [
                f"--cert-file={tls.server_cert}",
                f"--key-file={tls.server_key}",
                f"--trusted-ca-file={tls.ca_cert}",
            ]
            if cluster.client_cert_auth:
                args.append("--client-cert-auth")
        # last, so that they override the flags above
        args += cluster.extra_args
        return tuple(args)

    # -- process state ----------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The process id while the member runs (paused included), else ``None``."""
        process = self._process
        if process is None or process.poll() is not None:
            return None
        return process.pid

    @property
    def returncode(self) -> int | None:
        """Exit status of the member's last process (``None`` while it runs)."""
        return None if self._process is None else self._process.poll()

    @property
    def is_running(self) -> bool:
        """Whether the process is alive (a paused member is still running)."""
        return self.pid is not None

    @property
    def is_paused(self) -> bool:
        """Whether the member is stopped with SIGSTOP (see `pause`)."""
        return self._paused and self.is_running

    @property
    def crashed(self) -> bool:
        """Whether the process exited although nobody stopped or killed it."""
        return self._wanted and self._process is not None and self._process.poll() is not None

    # -- control ----------------------------------------------------------------------

    def _spawn(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._paused = False
        try:
            self._log_offset = self.log_path.stat().st_size
        except FileNotFoundError:
            self._log_offset = 0
        self._process = spawn(self.args, log_path=self.log_path, env=_etcd_env())
        self._wanted = True

    def _output_since_spawn(self, limit: int = 1 << 16) -> str:
        """What the current process wrote to the log (its last ``limit`` bytes)."""
        try:
            with open(self.log_path, "rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(self._log_offset, size - limit))
                return log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Start a stopped member with its data directory and ports.

        With ``wait`` (the default), return once the member reports healthy (it needs a
        quorum of the cluster running for that); raises `LocalClusterError` with the
        log's tail if it exits, `ClusterUnhealthyError` on timeout.
        """
        self._cluster._check_open()
        if self.is_running:
            raise LocalClusterError("etcd member is already running", member=self.name)
        self._spawn()
        if wait:
            self._cluster._wait_members([self], timeout)

    def restart(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Stop the member if it runs (SIGTERM), then `start` it again."""
        self._cluster._check_open()
        if self.is_running:
            self.stop()
        self.start(wait=wait, timeout=timeout)

    def stop(self, timeout: float = _STOP_TIMEOUT_S) -> int | None:
        """Stop the member gracefully: resume it if paused, SIGTERM, wait.

        Sends SIGKILL if it has not exited within ``timeout`` seconds. Returns the exit
        status (``None`` if it never ran).
        """
        self._wanted = False
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            self.resume()
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._paused = False
        return process.returncode

    def kill(self) -> None:
        """Kill the member with SIGKILL (a crash: no graceful shutdown) and reap it."""
        self._wanted = False
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            # a paused member is killed frozen (SIGKILL ends a stopped process): it never
            # runs again, not even for the instant a resume first would give it to send
            # what it missed (as the docker backend's kill); SIGCONT after it is a no-op
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            self.resume()
        process.wait()
        self._paused = False

    def pause(self) -> None:
        """Freeze the member with SIGSTOP (it keeps its sockets but answers nothing)."""
        self._cluster._check_open()
        pid = self.pid
        if pid is None:
            raise LocalClusterError(
                "cannot pause an etcd member that is not running", member=self.name
            )
        os.kill(pid, signal.SIGSTOP)
        self._paused = True
        if sys.platform.startswith("linux"):
            # SIGSTOP is delivered asynchronously: return once the process is stopped
            deadline = time.monotonic() + 2.0
            while _proc_state(pid) not in ("T", "t", None) and time.monotonic() < deadline:
                time.sleep(0.005)

    def resume(self) -> None:
        """Resume a paused member with SIGCONT (a no-op when it is not paused)."""
        pid = self.pid
        if pid is not None and self._paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._paused = False

    # -- probes -----------------------------------------------------------------------

    def health(self, timeout: float = 1.0) -> bool:
        """Whether ``/health`` on the metrics URL answers ``{"health": "true"}``."""
        return is_healthy(http_get(self.metrics_port, "/health", timeout))

    def is_leader(self, timeout: float = 1.0) -> bool:
        """Whether this member is the Raft leader (``etcd_server_is_leader`` metric)."""
        got = http_get(self.metrics_port, "/metrics", timeout)
        if got is None or got[0] != 200:
            return False
        found = _IS_LEADER_RE.search(got[1])
        return found is not None and found.group(1) in (b"1", b"1.0")

    # -- async variants: the waits run in a worker thread, which their own timeout
    # bounds (asyncio.timeout around the await could not stop the thread) -------------

    async def astart(self, *, wait: bool = True, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """`start` without blocking the event loop."""
        await asyncio.to_thread(self.start, wait=wait, timeout=timeout)

    async def arestart(self, *, wait: bool = True, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """`restart` without blocking the event loop."""
        await asyncio.to_thread(self.restart, wait=wait, timeout=timeout)

    async def astop(self, timeout: float = _STOP_TIMEOUT_S) -> int | None:  # noqa: ASYNC109
        """`stop` without blocking the event loop."""
        return await asyncio.to_thread(self.stop, timeout)

    async def akill(self) -> None:
        """`kill` without blocking the event loop."""
        await asyncio.to_thread(self.kill)


def describe_failure(members: Sequence[EtcdMember], lines: int) -> str:
    """The log tails of ``members``, for an error message."""
    parts = []
    for member in members:
        tail = "\n".join("    " + line for line in member.log_tail(lines)) or "    (empty)"
        parts.append(f"  last log lines of {member.name} ({member.log_path}):\n{tail}")
    return "\n".join(parts)
