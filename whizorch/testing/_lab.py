"""`RegionLab`: a 3-member etcd cluster with one member per region, and regions apart.

Every byte between two regions pays a one-way delay (half the pair's round trip, with
optional jitter); bytes inside a region pay none. That holds for etcd's peer (Raft)
traffic and for clients placed in a region talking to another region's member. At run
time a pair of regions can be cut (both ways or one way), healed, and given another
delay.

**netns mode** (root and ``ip netns``): one network namespace per region, named
``wz-<pid>-<n>-<region>``, with only its loopback up. Member ``i`` is advertised at
``127.0.0.(i+1)`` (client port 2379, peer port 2380) in every namespace: in its own
namespace that address is the member itself, in the others a listener of the lab's
network process (``_lab_net``) which delays every chunk and forwards it to the member's
namespace. A process placed in a region (`RegionLab.command`, `RegionLab.popen`) runs
inside that namespace and can reach nothing else.

**approximate mode** (no root): everything on the host's 127.0.0.1. Clients placed in a
region use per-pair proxies, so client traffic pays exactly the matrix; but etcd has
one peer URL per member, so peer traffic goes through one proxy per member, which tells
the sending member by the ``X-Server-From`` header etcd puts on its Raft requests and
then applies that pair's link. Peer bytes it cannot attribute (etcd's version probes)
pay the member's mean one-way delay and no cut. Nothing stops a process from reaching
a member directly: placement is only the endpoints it is given.

In both modes the lab itself reaches each member directly, undelayed and never cut
(`RegionLab.cluster`: health, leader, etcdctl), so checks see the truth.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self

import attrs

from whizorch.errors import ClosedError, ConfigError
from whizorch.testing._cluster import LocalEtcdCluster, _shielded_thread
from whizorch.testing._lab_model import (
    DEFAULT_REGIONS,
    Link,
    check_regions,
    default_delay_ms,
    jitter_matrix,
    namespace_name,
    rtt_matrix,
    stale_namespaces,
)
from whizorch.testing._member import EtcdMember, LocalClusterError
from whizorch.testing._process import _executor, dying_with_parent, free_ports, log_tail

__all__ = ["LabMode", "RegionLab", "netns_unavailable_reason"]

LabMode = Literal["netns", "approximate"]

_CLIENT_PORT, _PEER_PORT, _METRICS_PORT = 2379, 2380, 2381  # inside each namespace
_REQUEST_TIMEOUT_S = 10.0
_STOP_GRACE_S = 5.0
_IP_TIMEOUT_S = 15.0

_NEW, _STARTING, _OPEN, _CLOSED = "new", "starting", "open", "closed"

_live: dict[int, RegionLab] = {}
_live_lock = threading.Lock()
_atexit_registered = False
_lab_numbers = iter(range(1, 1 << 30))


def _register(lab: RegionLab) -> None:
    global _atexit_registered
    with _live_lock:
        if not _atexit_registered:
            atexit.register(_close_all_at_exit)
            _atexit_registered = True
        _live[id(lab)] = lab


def _unregister(lab: RegionLab) -> None:
    with _live_lock:
        _live.pop(id(lab), None)


def _close_all_at_exit() -> None:
    with _live_lock:
        labs = list(_live.values())
        _live.clear()
    for lab in labs:
        with contextlib.suppress(Exception):
            lab._teardown()


# -- network namespaces -------------------------------------------------------------


def netns_unavailable_reason() -> str | None:
    """Why this process cannot give the lab network namespaces, or ``None`` if it can."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return f"network namespaces need root (`ip netns add`); running as uid {os.geteuid()}"
    if shutil.which("ip") is None:
        return "network namespaces need the `ip` command (iproute2), which is not on PATH"
    try:
        done = _ip("netns", "list", check=False)
    except OSError as exc:
        return f"`ip netns list` could not run: {exc}"
    if done.returncode != 0:
        return f"`ip netns list` failed: {done.stderr.strip()}"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["ip", *args],
        capture_output=True,
        text=True,
        timeout=_IP_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and done.returncode != 0:
        raise LocalClusterError(
            f"`ip {' '.join(args)}` failed with status {done.returncode}: "
            f"{done.stderr.strip() or done.stdout.strip()}",
            returncode=done.returncode,
        )
    return done


def _namespaces() -> list[str]:
    done = _ip("netns", "list", check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_namespace(name: str) -> None:
    """Kill what still runs inside namespace ``name``, then delete it."""
    done = _ip("netns", "pids", name, check=False)
    pids = [int(p) for p in done.stdout.split() if p.isdigit() and int(p) != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    _ip("netns", "delete", name, check=False)


def remove_stale_namespaces() -> list[str]:
    """Delete the namespaces of labs whose process is gone (killed before closing)."""
    stale = stale_namespaces(_namespaces(), _alive)
    for name in stale:
        _remove_namespace(name)
    return stale


# -- the network process -------------------------------------------------------------


class _NetProcess:
    """The lab's network process (``_lab_net``) and its JSON-lines requests."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._lock = threading.Lock()

        def run() -> subprocess.Popen[bytes]:
            with open(log_path, "ab") as log:
                return subprocess.Popen(
                    dying_with_parent([sys.executable, "-m", "whizorch.testing._lab_net"]),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    close_fds=True,
                    start_new_session=True,
                )

        # started from the long-lived spawner thread: it dies with this process only
        self.process = _executor().submit(run).result() if sys.platform.startswith("linux") else run()

    def _fail(self, what: str) -> LocalClusterError:
        tail = "\n".join("    " + line for line in log_tail(self.log_path, 20)) or "    (empty)"
        return LocalClusterError(
            f"the region lab's network process {what}; last lines of {self.log_path}:\n{tail}",
            returncode=self.process.poll(),
        )

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request and return the answer; `LocalClusterError` on failure."""
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        with self._lock:
            try:
                stdin.write((json.dumps({"op": op, **fields}) + "\n").encode())
                stdin.flush()
            except (BrokenPipeError, ValueError):
                raise self._fail("has exited") from None
            line = self._readline(stdout)
        if not line:
            raise self._fail("has exited")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise self._fail(f"refused {op!r}: {answer['error']}")
        return answer

    def _readline(self, stdout: IO[bytes]) -> bytes:
        deadline = time.monotonic() + _REQUEST_TIMEOUT_S
        line = b""
        fd = stdout.fileno()
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._fail(f"did not answer within {_REQUEST_TIMEOUT_S:g}s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                byte = os.read(fd, 1)
                if not byte:
                    return b""
                line += byte
        return line

    @property
    def is_running(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        """Close its input (it exits), then kill it if it lingers."""
        with contextlib.suppress(OSError, ValueError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


# -- the members ---------------------------------------------------------------------


@attrs.frozen
class _Place:
    """Where one member runs and how it is reached."""

    region: str
    namespace: str | None
    host: str
    """The address it listens on (inside its namespace)."""
    client_port: int
    peer_port: int
    metrics_port: int
    advertise_client: str
    advertise_peer: str
    direct_client: int
    """Host 127.0.0.1 port reaching its client port, undelayed (the lab's own view)."""
    direct_metrics: int


class _LabMember(EtcdMember):
    """An `EtcdMember` placed in a region: ``endpoint``, ``health`` and ``is_leader`` use
    the lab's direct view; the command line listens and advertises as the place says."""

    def __init__(self, cluster: LocalEtcdCluster, place: _Place) -> None:
        super().__init__(
            cluster,
            name=place.region,
            client_port=place.direct_client,
            peer_port=place.peer_port,
            metrics_port=place.direct_metrics,
        )
        self.place = place

    @property
    def region(self) -> str:
        """The region this member serves."""
        return self.place.region

    @property
    def peer_url(self) -> str:
        """The advertised peer URL (what the other members dial)."""
        return self.place.advertise_peer

    @property
    def args(self) -> tuple[str, ...]:
        place, cluster = self.place, self._cluster
        inside = f"http://{place.host}"
        args = [
            str(cluster.etcd_bin),
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={inside}:{place.client_port}",
            f"--advertise-client-urls={place.advertise_client}",
            f"--listen-peer-urls={inside}:{place.peer_port}",
            f"--initial-advertise-peer-urls={place.advertise_peer}",
            f"--listen-metrics-urls={inside}:{place.metrics_port}",
            f"--initial-cluster={cluster.initial_cluster}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={cluster.token}",
            f"--heartbeat-interval={cluster.heartbeat_ms}",
            f"--election-timeout={cluster.election_ms}",
            "--logger=zap",
            "--log-outputs=stderr",
            *cluster.extra_args,
        ]
        if place.namespace is not None:
            args = ["ip", "netns", "exec", place.namespace, *args]
        return tuple(args)


class _LabCluster(LocalEtcdCluster):
    """The lab's members: laid out by the lab rather than on free loopback ports."""

    def __init__(self, lab: RegionLab, **options: Any) -> None:
        super().__init__(len(lab.regions), **options)
        self._lab = lab

    def _lay_out(self, layout: dict[str, Any] | None) -> None:
        self._token = f"whizorch-lab-{uuid.uuid4().hex[:16]}"
        self._members = tuple(_LabMember(self, place) for place in self._lab._lay_out())


# -- the lab -------------------------------------------------------------------------


class RegionLab:
    """A 3-member etcd cluster (any number works), one member per region, regions apart.

    ::

        with RegionLab() as lab:                      # eu, us, ap; RTT 80/150/200 ms
            print(lab.mode, lab.endpoints("us"))      # us's own member first
            proc = lab.popen("us", ["python", "my_client.py"])   # placed in us
            lab.partition("eu", "us")                 # both ways; one_way=True: eu -> us
            lab.heal()
            lab.set_rtt("eu", "us", 300)

    ``mode``: ``"auto"`` (namespaces when possible, else the approximation),
    ``"netns"`` (error when namespaces are unavailable) or ``"approximate"``. The lab
    starts once: unopened, open, closed; closing twice is fine. Closing kills every
    process placed in a region, the members and the network process, deletes the
    namespaces and the temporary directories; so does the ``atexit`` hook, and a lab
    starting deletes the namespaces of labs whose process died without closing.
    """

    def __init__(
        self,
        regions: Sequence[str] = DEFAULT_REGIONS,
        *,
        rtt_ms: Mapping[str, Mapping[str, float]] | None = None,
        jitter_ms: float | Mapping[str, Mapping[str, float]] = 0.0,
        mode: Literal["auto", "netns", "approximate"] = "auto",
        etcd_bin: str | os.PathLike[str] | None = None,
        heartbeat_ms: int = 100,
        election_ms: int | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = 60.0,
        seed: int = 0,
    ) -> None:
        """Describe the lab; nothing runs until `start` (or ``with``/``async with``).

        ``regions``: the region names, one member each (a-z, 0-9, _; at most 16
        characters). ``rtt_ms``: round trips ``{region: {other: ms}}``, every pair once
        (default: eu-us 80, us-ap 150, eu-ap 200). ``jitter_ms``: each chunk's one-way
        delay is drawn from ``delay +- jitter`` (one number, or a table like
        ``rtt_ms``); order within a connection is kept. ``heartbeat_ms`` and
        ``election_ms``: etcd's Raft timing (default election timeout: 10 x the largest
        round trip, at least 1000 ms, as etcd advises across regions). ``extra_args``:
        more etcd flags. ``seed``: the jitter's random seed.
        """
        self.regions = check_regions(regions)
        """The regions, in member order (member ``i`` is ``127.0.0.(i+1)`` in netns mode)."""
        self._rtt = rtt_matrix(self.regions, rtt_ms)
        jitter = jitter_matrix(self.regions, jitter_ms, self._rtt)
        if mode not in ("auto", "netns", "approximate"):
            raise ConfigError(
                f"mode must be 'auto', 'netns' or 'approximate', not {mode!r}", mode=mode
            )
        if election_ms is None:
            election_ms = max(1000, 10 * round(max(self._rtt.values(), default=0.0)))
        self._requested_mode = mode
        self._links = {
            (a, b): Link(src=a, dst=b, delay_ms=ms / 2, jitter_ms=jitter[(a, b)], up=True)
            for (a, b), ms in self._rtt.items()
        }
        self._cluster = _LabCluster(
            self,
            etcd_bin=etcd_bin,
            heartbeat_ms=heartbeat_ms,
            election_ms=election_ms,
            extra_args=extra_args,
            start_timeout=start_timeout,
        )
        self._seed = seed
        self._mode: LabMode | None = None
        self.mode_reason = ""
        """Why the lab runs in approximate mode (empty in netns mode)."""
        self._directory: Path | None = None
        self._namespaces: dict[str, str] = {}
        self._net: _NetProcess | None = None
        self._views: dict[tuple[str, str], int] = {}  # approximate: (from, member) -> port
        self._peer_proxies: dict[str, int] = {}  # approximate: member -> peer proxy port
        self._direct: dict[str, tuple[int, int]] = {}  # netns: member -> (client, metrics)
        self._placed: list[subprocess.Popen[Any]] = []
        self._state = _NEW
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"<RegionLab {self._state} mode={self._mode} regions={','.join(self.regions)}>"

    # -- what a user needs ------------------------------------------------------------

    @property
    def mode(self) -> LabMode:
        """``"netns"`` (a namespace per region) or ``"approximate"`` (host loopback)."""
        if self._mode is None:
            raise ClosedError("the lab has not been started")
        return self._mode

    @property
    def cluster(self) -> LocalEtcdCluster:
        """The members as a `LocalEtcdCluster` seen from the lab itself: its endpoints
        reach every member undelayed and never cut (for checks, etcdctl, leader);
        kill, pause and restart members through ``cluster.members``."""
        return self._cluster

    @property
    def directory(self) -> Path:
        """The lab's temporary directory (the network process's log)."""
        if self._directory is None:
            raise ClosedError("the lab has not been started")
        return self._directory

    @property
    def is_open(self) -> bool:
        """Whether the lab has started and is not closed."""
        return self._state == _OPEN

    @property
    def network_running(self) -> bool:
        """Whether the lab's network process runs (it carries every path between regions)."""
        return self._net is not None and self._net.is_running

    def _check_open(self) -> None:
        if self._state != _OPEN:
            raise ClosedError(f"the region lab is {self._state}")

    def _check_region(self, region: str) -> int:
        try:
            return self.regions.index(region)
        except ValueError:
            raise ConfigError(
                f"{region!r} is not a region of the lab (regions: {', '.join(self.regions)})",
                region=region,
            ) from None

    def member(self, region: str) -> EtcdMember:
        """The etcd member of ``region`` (kill, pause, restart it)."""
        self._check_open()
        return self._cluster.members[self._check_region(region)]

    def namespace(self, region: str) -> str | None:
        """The network namespace of ``region`` (``None`` in approximate mode)."""
        self._check_open()
        self._check_region(region)
        return self._namespaces.get(region)

    def endpoints(self, region: str) -> list[str]:
        """Client endpoints as seen from ``region``: its own member first, then the
        others in region order (each through its delayed path)."""
        self._check_open()
        own = self._check_region(region)
        order = [own, *(i for i in range(len(self.regions)) if i != own)]
        return [self._endpoint(region, self.regions[i]) for i in order]

    def _endpoint(self, seen_from: str, member: str) -> str:
        if self._mode == "netns":
            return f"127.0.0.{self.regions.index(member) + 1}:{_CLIENT_PORT}"
        if seen_from == member:
            return self.member(member).endpoint
        return f"127.0.0.1:{self._views[(seen_from, member)]}"

    def command(self, region: str, argv: Sequence[str]) -> list[str]:
        """``argv`` placed in ``region``: under ``ip netns exec`` in netns mode; as it is
        in approximate mode (give it `endpoints` or `env`)."""
        self._check_open()
        self._check_region(region)
        namespace = self._namespaces.get(region)
        return list(argv) if namespace is None else ["ip", "netns", "exec", namespace, *argv]

    def env(self, region: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this environment) with ``WHIZORCH_ETCD_ENDPOINTS`` set to
        `endpoints` of ``region`` and ``WHIZORCH_LAB_REGION`` to ``region``."""
        env = dict(os.environ if base is None else base)
        env["WHIZORCH_ETCD_ENDPOINTS"] = ",".join(self.endpoints(region))
        env["WHIZORCH_LAB_REGION"] = region
        return env

    def popen(self, region: str, argv: Sequence[str], **options: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``region`` (`subprocess.Popen` options; ``env`` defaults to
        `env`). The process is killed when the lab closes, or when this process dies."""
        with self._lock:
            command = dying_with_parent(self.command(region, argv))
            options.setdefault("env", self.env(region))

            def run() -> subprocess.Popen[Any]:
                return subprocess.Popen(command, **options)

            # from the long-lived spawner thread: the process dies with this one
            process = _executor().submit(run).result()
            self._placed.append(process)
            return process

    def config_toml(self) -> str:
        """The regions as whizorch TOML: each region's own member as its ``endpoints``
        and the round trips as ``latency_ms`` (in netns mode also ``[etcd] endpoints``,
        the same in every region; in approximate mode give each process `env`)."""
        lines = [f"# the region lab's regions (mode {self.mode})"]
        if self.mode == "netns":
            every = ", ".join(f'"{e}"' for e in self.endpoints(self.regions[0]))
            lines += ["[etcd]", f"endpoints = [{every}]", ""]
        else:
            lines += [
                "# each process needs its region's endpoints: WHIZORCH_ETCD_ENDPOINTS from",
                "# RegionLab.env(region) (or --etcd)",
                "",
            ]
        for i, region in enumerate(self.regions):
            lines += [f"[regions.{region}]", f'endpoints = ["{self.endpoints(region)[0]}"]']
            later = [f"{other} = {self.rtt_ms(region, other):g}" for other in self.regions[i + 1 :]]
            if later:
                lines.append(f"latency_ms = {{ {', '.join(later)} }}")
            lines.append("")
        return "\n".join(lines)

    # -- links ------------------------------------------------------------------------

    def link(self, src: str, dst: str) -> Link:
        """The direction ``src -> dst`` as the lab applies it now."""
        self._check_region(src)
        self._check_region(dst)
        if src == dst:
            raise ConfigError("traffic inside a region has no link", region=src)
        return self._links[(src, dst)]

    @property
    def links(self) -> tuple[Link, ...]:
        """Every direction between two regions."""
        return tuple(self._links.values())

    def rtt_ms(self, a: str, b: str) -> float:
        """The round trip between ``a`` and ``b`` now (0 inside a region)."""
        if self._check_region(a) == self._check_region(b):
            return 0.0
        return self._links[(a, b)].delay_ms + self._links[(b, a)].delay_ms

    def _apply(self, changed: Sequence[Link]) -> None:
        with self._lock:
            self._check_open()
            assert self._net is not None
            self._net.request("links", links=[attrs.asdict(link) for link in changed])
            for link in changed:
                self._links[(link.src, link.dst)] = link

    def partition(self, a: str, b: str, *, one_way: bool = False) -> None:
        """Cut ``a -> b`` and, unless ``one_way``, ``b -> a``: nothing gets through
        until `heal` (connections stay open; what was sent arrives after the heal)."""
        ends = [(a, b)] if one_way else [(a, b), (b, a)]
        self._apply([attrs.evolve(self.link(src, dst), up=False) for src, dst in ends])

    def isolate(self, region: str) -> None:
        """Cut ``region`` from every other region, both ways."""
        self._check_region(region)
        self._apply(
            [
                attrs.evolve(link, up=False)
                for link in self._links.values()
                if region in (link.src, link.dst)
            ]
        )

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        """Heal the pair ``a``, ``b`` (both ways), or every link when none is given."""
        if (a is None) != (b is None):
            raise ConfigError("heal takes two regions, or none to heal everything")
        if a is not None and b is not None:
            chosen = [self.link(a, b), self.link(b, a)]
        else:
            chosen = list(self._links.values())
        self._apply([attrs.evolve(link, up=True) for link in chosen if not link.up])

    def set_rtt(self, a: str, b: str, rtt_ms: float, *, jitter_ms: float | None = None) -> None:
        """Give the pair ``a``, ``b`` a new round trip (and jitter), both ways, from the
        next chunk on (chunks already held keep their delay)."""
        current = self.link(a, b)
        rtt = rtt_matrix((a, b), {a: {b: rtt_ms}})
        jitter = current.jitter_ms if jitter_ms is None else jitter_ms
        jitter_matrix((a, b), {a: {b: jitter}}, rtt)
        self._apply(
            [
                attrs.evolve(self.link(src, dst), delay_ms=rtt_ms / 2, jitter_ms=jitter)
                for src, dst in ((a, b), (b, a))
            ]
        )

    # -- etcd's leader ----------------------------------------------------------------

    def leader_region(self) -> str | None:
        """The region whose member is etcd's Raft leader now, if one is."""
        leader = self._cluster.leader()
        return None if leader is None else leader.name

    def wait_leader_region(self, timeout: float = 30.0) -> str:
        """Wait until a member leads, and return its region."""
        return self._cluster.wait_leader(timeout).name

    def put_floor_ms(self, region: str, *, leader: str | None = None) -> float:
        """The least a linearizable write from ``region`` can cost with the current
        delays: the round trip to the leader's region plus the leader's round trip to
        its nearest other member (the quorum of 3). ``leader``: default `leader_region`."""
        self._check_region(region)
        if leader is None:
            leader = self.leader_region()
            if leader is None:
                raise LocalClusterError("etcd has no leader now")
        others = [self.rtt_ms(leader, r) for r in self.regions if r != leader]
        quorum_rtt = sorted(others)[len(self.regions) // 2 - 1] if others else 0.0
        return self.rtt_ms(region, leader) + quorum_rtt

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> Self:
        """Make the namespaces, start the network and the members; return ``self`` once
        every member is healthy. A lab starts once; after a failed start it is closed."""
        with self._lock:
            if self._state == _CLOSED:
                raise ClosedError("the region lab is closed; make a new RegionLab")
            if self._state != _NEW:
                raise LocalClusterError("the region lab is already started")
            self._state = _STARTING
            _register(self)
            try:
                self._start()
            except BaseException:
                self._teardown()
                raise
            self._state = _OPEN
        return self

    def _start(self) -> None:
        self._directory = Path(tempfile.mkdtemp(prefix="whizorch-lab-"))
        self._mode = self._choose_mode()
        if self._mode == "netns":
            remove_stale_namespaces()
            number = next(_lab_numbers)
            for region in self.regions:
                name = namespace_name(os.getpid(), number, region)
                _ip("netns", "add", name)
                self._namespaces[region] = name
                _ip("-n", name, "link", "set", "lo", "up")
                # 127.0.0.0/8 is local already; the addresses make `ip addr` show the lab
                for i in range(1, len(self.regions)):
                    _ip("-n", name, "addr", "add", f"127.0.0.{i + 1}/32", "dev", "lo")
        self._net = _NetProcess(self.directory / "network.log")
        answer = self._net.request(
            "start",
            seed=self._seed,
            links=[attrs.asdict(link) for link in self._links.values()],
            listeners=self._listeners(),
            targets=self._netns_targets(),
        )
        self._take_ports(answer["ports"])
        self._cluster.start()
        if self._mode == "approximate":
            self._net.request("targets", ids=self._member_ids())

    def _choose_mode(self) -> LabMode:
        if self._requested_mode == "approximate":
            self.mode_reason = "approximate mode was asked for"
            return "approximate"
        reason = netns_unavailable_reason()
        if reason is None:
            return "netns"
        if self._requested_mode == "netns":
            raise LocalClusterError(f"the region lab cannot run in netns mode: {reason}")
        self.mode_reason = reason
        return "approximate"

    def _listeners(self) -> list[dict[str, Any]]:
        """What the network process listens on, in the order `_take_ports` reads."""
        out: list[dict[str, Any]] = []
        for i, member in enumerate(self.regions):
            host = f"127.0.0.{i + 1}"
            if self._mode == "netns":
                for service in ("client", "metrics"):  # the lab's own undelayed view
                    out.append(_listener(None, "127.0.0.1", 0, member, service, None, None))
                for region in self.regions:
                    if region == member:
                        continue
                    for service, port in (("client", _CLIENT_PORT), ("peer", _PEER_PORT)):
                        ns = self._namespaces[region]
                        out.append(_listener(ns, host, port, member, service, region, member))
            else:
                for region in self.regions:
                    if region != member:
                        out.append(_listener(None, "127.0.0.1", 0, member, "client", region, member))
                default = default_delay_ms(self.regions, self._rtt)[member]
                peer = _listener(None, "127.0.0.1", 0, member, "peer", None, member)
                out.append({**peer, "identify": True, "default_delay_ms": default})
        return out

    def _take_ports(self, ports: list[int]) -> None:
        got = iter(ports)
        for member in self.regions:
            if self._mode == "netns":
                self._direct[member] = (next(got), next(got))
                for region in self.regions:
                    if region != member:
                        next(got), next(got)
            else:
                for region in self.regions:
                    if region != member:
                        self._views[(region, member)] = next(got)
                self._peer_proxies[member] = next(got)

    def _netns_targets(self) -> dict[str, dict[str, list[Any]]]:
        if self._mode != "netns":
            return {}
        return {
            member: {
                service: [self._namespaces[member], f"127.0.0.{i + 1}", port]
                for service, port in (
                    ("client", _CLIENT_PORT),
                    ("peer", _PEER_PORT),
                    ("metrics", _METRICS_PORT),
                )
            }
            for i, member in enumerate(self.regions)
        }

    def _lay_out(self) -> list[_Place]:
        """The members' places (called by the cluster at each start attempt)."""
        places = []
        if self._mode == "netns":
            for i, region in enumerate(self.regions):
                host = f"127.0.0.{i + 1}"
                client, metrics = self._direct[region]
                places.append(
                    _Place(
                        region=region,
                        namespace=self._namespaces[region],
                        host=host,
                        client_port=_CLIENT_PORT,
                        peer_port=_PEER_PORT,
                        metrics_port=_METRICS_PORT,
                        advertise_client=f"http://{host}:{_CLIENT_PORT}",
                        advertise_peer=f"http://{host}:{_PEER_PORT}",
                        direct_client=client,
                        direct_metrics=metrics,
                    )
                )
            return places
        ports = free_ports(3 * len(self.regions))
        targets: dict[str, dict[str, list[Any]]] = {}
        for i, region in enumerate(self.regions):
            client, peer, metrics = ports[3 * i : 3 * i + 3]
            places.append(
                _Place(
                    region=region,
                    namespace=None,
                    host="127.0.0.1",
                    client_port=client,
                    peer_port=peer,
                    metrics_port=metrics,
                    advertise_client=f"http://127.0.0.1:{client}",
                    advertise_peer=f"http://127.0.0.1:{self._peer_proxies[region]}",
                    direct_client=client,
                    direct_metrics=metrics,
                )
            )
            targets[region] = {
                service: [None, "127.0.0.1", port]
                for service, port in (("client", client), ("peer", peer), ("metrics", metrics))
            }
        assert self._net is not None
        self._net.request("targets", targets=targets)
        return places

    def _member_ids(self) -> dict[str, str]:
        """etcd's member ids (hex) -> region, for the approximation to tell peers apart."""
        done = self._cluster.etcdctl("member", "list", "-w", "json")
        members = json.loads(done.stdout)["members"]
        return {f"{int(m['ID']):x}": str(m["name"]) for m in members}

    def close(self) -> None:
        """Stop everything the lab started and delete what it made. Closing twice is fine."""
        with self._lock:
            if self._state == _CLOSED:
                return
            if self._state == _NEW:
                self._state = _CLOSED
                return
            self._teardown()

    def _teardown(self) -> None:
        """Each step runs even when one before it failed; the first error is raised."""
        errors: list[BaseException] = []

        def step(fn: Any, *args: Any) -> None:
            try:
                fn(*args)
            except Exception as exc:
                errors.append(exc)

        for process in self._placed:
            step(_stop_process, process)
        step(self._cluster.close)
        if self._net is not None:
            step(self._net.close)
        for name in self._namespaces.values():
            step(_remove_namespace, name)
        if self._directory is not None:
            step(shutil.rmtree, self._directory, True)
        self._state = _CLOSED
        _unregister(self)
        if errors:
            raise errors[0]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def astart(self) -> Self:
        """`start` in a worker thread; if cancelled, the half-started lab is closed."""
        try:
            return await _shielded_thread(self.start)
        except asyncio.CancelledError:
            await _shielded_thread(self.close)
            raise

    async def aclose(self) -> None:
        """`close` in a worker thread (it finishes even if the caller is cancelled)."""
        await _shielded_thread(self.close)

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _listener(
    namespace: str | None,
    host: str,
    port: int,
    member: str,
    service: str,
    src: str | None,
    dst: str | None,
) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "host": host,
        "port": port,
        "member": member,
        "service": service,
        "src": src,
        "dst": dst,
    }


def _stop_process(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
