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
region use per-pair listeners, so client traffic pays exactly the matrix; but etcd has
one peer URL per member, so peer traffic goes through one listener per member, which
tells the sending member by the ``X-Server-From`` header etcd puts on its Raft requests
and then applies that pair's link. Peer bytes it cannot attribute (etcd's version
probes) pay the member's mean one-way delay and no cut. Nothing stops a process from
reaching a member directly: placement is only the endpoints it is given.

In both modes the lab itself reaches each member directly, undelayed and never cut
(`RegionLab.cluster`: health, leader, etcdctl), so checks see the truth. Connections
are set up at once (the handshake with a listener is local); from then on every byte
pays its link.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Self

import attrs

from whizorch.errors import ClosedError, ConfigError
from whizorch.testing._binary import find_etcd
from whizorch.testing._cluster import LocalEtcdCluster
from whizorch.testing._lab_host import (
    NetProcess,
    add_namespace,
    make_lab_directory,
    netns_unavailable_reason,
    remove_namespace,
    remove_stale_directories,
    remove_stale_namespaces,
    start_child,
    stop_process,
)
from whizorch.testing._lab_layout import LabCluster, LabMode, Layout, Place
from whizorch.testing._lab_model import (
    DEFAULT_REGIONS,
    Link,
    check_regions,
    jitter_matrix,
    namespace_name,
    rtt_matrix,
)
from whizorch.testing._lifecycle import Harness, live
from whizorch.testing._member import EtcdMember, LocalClusterError

__all__ = ["LabMode", "RegionLab", "netns_unavailable_reason"]

_lab_numbers = iter(range(1, 1 << 30))


def _namespaces_in_use() -> set[str]:
    return {name for lab in live() if isinstance(lab, RegionLab) for name in lab._namespaces.values()}


class RegionLab(Harness):
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

    WHAT = "region lab"

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
        round trip, at least 1000 ms, as etcd advises across regions). Members run with
        ``--pre-vote=true`` (etcd 3.5's default; etcd 3.4's is false, and there a member
        cut off keeps raising its Raft term and deposes the leader when it is healed, a
        few seconds with no leader). ``extra_args``: more etcd flags (they come later,
        so ``--pre-vote=false`` turns it off). ``seed``: the jitter's random seed.
        """
        super().__init__()
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
        self.etcd_bin = find_etcd(etcd_bin)
        """The etcd binary the members run."""
        self.heartbeat_ms = heartbeat_ms
        """etcd's ``--heartbeat-interval``, in milliseconds."""
        self.election_ms = election_ms
        """etcd's ``--election-timeout``, in milliseconds."""
        self._cluster_options: dict[str, Any] = {
            "etcd_bin": self.etcd_bin,
            "heartbeat_ms": heartbeat_ms,
            "election_ms": election_ms,
            "extra_args": ("--pre-vote=true", *extra_args),
            "start_timeout": start_timeout,
        }
        self._cluster: LabCluster | None = None
        self._seed = seed
        self._mode: LabMode | None = None
        self.mode_reason = ""
        """Why the lab runs in approximate mode (empty in netns mode)."""
        self._directory: Path | None = None
        self._namespaces: dict[str, str] = {}
        self._net: NetProcess | None = None
        self._layout: Layout | None = None
        self._placed: list[subprocess.Popen[Any]] = []

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
        if self._cluster is None:
            raise ClosedError("the lab has not been started")
        return self._cluster

    @property
    def directory(self) -> Path:
        """The lab's temporary directory: the network process's log, and the members'
        data and logs under ``etcd/``."""
        if self._directory is None:
            raise ClosedError("the lab has not been started")
        return self._directory

    @property
    def network_running(self) -> bool:
        """Whether the lab's network process runs (it carries every path between regions)."""
        return self._net is not None and self._net.is_running

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
        return self.cluster.members[self._check_region(region)]

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
        assert self._layout is not None
        return [self._layout.endpoint(region, self.regions[i]) for i in order]

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
            options.setdefault("env", self.env(region))
            process = start_child(self.command(region, argv), **options)
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
        leader = self.cluster.leader()
        return None if leader is None else leader.name

    def wait_leader_region(self, timeout: float = 30.0) -> str:
        """Wait until a member leads, and return its region."""
        return self.cluster.wait_leader(timeout).name

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

    # -- lifecycle (start, close, context managers: _lifecycle.Harness) ----------------

    def start(self) -> Self:
        """Make the namespaces, start the network and the members; return ``self`` once
        every member is healthy. A lab starts once; after a failed start it is closed."""
        return super().start()

    def _start(self) -> None:
        remove_stale_directories()
        self._directory = make_lab_directory()
        self._mode = self._choose_mode()
        if self._mode == "netns":
            remove_stale_namespaces(in_use=_namespaces_in_use())
            number = next(_lab_numbers)
            for region in self.regions:
                name = namespace_name(os.getpid(), number, region)
                # named first: an interrupted add is still removed (deleting is idempotent)
                self._namespaces[region] = name
                # 127.0.0.0/8 is local already; the addresses make `ip addr` show the lab
                add_namespace(name, [Layout.host(i) for i in range(1, len(self.regions))])
        self._layout = Layout(self.regions, self._mode, self._namespaces, self._rtt)
        self._net = NetProcess(self.directory / "network.log")
        answer = self._net.request(
            "start",
            seed=self._seed,
            links=[attrs.asdict(link) for link in self._links.values()],
            listeners=self._layout.listeners(),
            targets=self._layout.netns_targets(),
        )
        self._layout.take_ports(answer["ports"])
        # the members' data inside the lab's directory: one directory to delete, also
        # when a lab whose process died is cleaned up by the next one
        self._cluster = LabCluster(
            len(self.regions), self._places, data_dir=self.directory / "etcd", **self._cluster_options
        )
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

    def _places(self) -> list[Place]:
        """The members' places (the cluster asks at each start attempt)."""
        assert self._layout is not None and self._net is not None
        places, targets = self._layout.places()
        if targets:
            self._net.request("targets", targets=targets)
        return places

    def _member_ids(self) -> dict[str, str]:
        """etcd's member ids (hex) -> region, for the approximation to tell peers apart
        (asked through etcd's JSON gateway on a member's client port: no etcdctl needed)."""
        member = self.cluster.members[0]
        conn = http.client.HTTPConnection("127.0.0.1", member.client_port, timeout=10)
        try:
            conn.request("POST", "/v3/cluster/member/list", body=b"{}")
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise LocalClusterError(f"cannot list etcd's members: {exc}") from exc
        finally:
            conn.close()
        if response.status != 200:
            raise LocalClusterError(f"cannot list etcd's members: HTTP {response.status} {body[:200]!r}")
        members = json.loads(body)["members"]
        return {f"{int(m['ID']):x}": str(m["name"]) for m in members}

    def close(self) -> None:
        """Stop everything the lab started and delete what it made. Closing twice is fine."""
        super().close()

    def _stop(self) -> None:
        """Each step runs even when one before it failed; the first error is raised."""
        errors: list[BaseException] = []

        def step(fn: Any, *args: Any) -> None:
            try:
                fn(*args)
            except Exception as exc:
                errors.append(exc)

        for process in self._placed:
            step(stop_process, process)
        if self._cluster is not None:
            step(functools.partial(self._cluster.close, graceful=False))
        if self._net is not None:
            step(self._net.close)
        for name in self._namespaces.values():
            step(remove_namespace, name)
        if self._directory is not None:
            step(shutil.rmtree, self._directory, True)
        if errors:
            raise errors[0]

