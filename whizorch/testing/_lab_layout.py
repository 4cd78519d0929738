"""Where the region lab's members listen, what its network process listens on, and
which endpoints each region sees.

netns mode: member ``i`` listens on ``127.0.0.(i+1)`` (client 2379, peer 2380, metrics
2381) inside its region's namespace and advertises those URLs; in every other region's
namespace the same address and ports are listeners of the network process, delayed by
that pair's link. The lab's own view is a pair of undelayed listeners per member (client,
metrics) on the host's 127.0.0.1.

approximate mode: members listen on free ports of the host's 127.0.0.1; each region
sees every other member's client port through a listener of its own (that pair's
link), and each member's peer port through one listener that tells the sending member
by its ``X-Server-From`` header. Members advertise those peer listeners.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import attrs

from whizorch.testing._cluster import LocalEtcdCluster
from whizorch.testing._lab_model import default_delay_ms
from whizorch.testing._member import EtcdMember
from whizorch.testing._process import free_ports

__all__ = ["LabCluster", "LabMember", "Layout", "Place"]

LabMode = Literal["netns", "approximate"]

CLIENT_PORT, PEER_PORT, METRICS_PORT = 2379, 2380, 2381  # inside each namespace
_SERVICES = (("client", CLIENT_PORT), ("peer", PEER_PORT), ("metrics", METRICS_PORT))

Target = list[Any]  # [namespace or None, host, port]: JSON for the network process


@attrs.frozen
class Place:
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


def _listener(
    namespace: str | None,
    host: str,
    member: str,
    service: str,
    *,
    port: int = 0,
    src: str | None = None,
    dst: str | None = None,
    identify: bool = False,
    default_delay_ms: float = 0.0,
) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "host": host,
        "port": port,
        "member": member,
        "service": service,
        "src": src,
        "dst": dst,
        "identify": identify,
        "default_delay_ms": default_delay_ms,
    }


class Layout:
    """The addresses of one lab, filled in as the network process reports its ports."""

    def __init__(
        self,
        regions: Sequence[str],
        mode: LabMode,
        namespaces: Mapping[str, str],
        rtt: Mapping[tuple[str, str], float],
    ) -> None:
        self.regions = tuple(regions)
        self.mode = mode
        self.namespaces = dict(namespaces)
        self._rtt = rtt
        self._direct: dict[str, tuple[int, int]] = {}  # netns: member -> (client, metrics)
        self._views: dict[tuple[str, str], int] = {}  # approximate: (from, member) -> port
        self._peers: dict[str, int] = {}  # approximate: member -> its peer listener
        self._places: dict[str, Place] = {}

    @staticmethod
    def host(index: int) -> str:
        """The address of member ``index`` in netns mode."""
        return f"127.0.0.{index + 1}"

    def listeners(self) -> list[dict[str, Any]]:
        """What the network process listens on, in the order `take_ports` reads."""
        out: list[dict[str, Any]] = []
        defaults = default_delay_ms(self.regions, self._rtt)
        for i, member in enumerate(self.regions):
            if self.mode == "netns":
                out.append(_listener(None, "127.0.0.1", member, "client"))
                out.append(_listener(None, "127.0.0.1", member, "metrics"))
                for region in self.regions:
                    if region != member:
                        for service, port in _SERVICES[:2]:
                            out.append(
                                _listener(
                                    self.namespaces[region], self.host(i), member, service,
                                    port=port, src=region, dst=member,
                                )
                            )
            else:
                for region in self.regions:
                    if region != member:
                        out.append(
                            _listener(None, "127.0.0.1", member, "client", src=region, dst=member)
                        )
                out.append(
                    _listener(
                        None, "127.0.0.1", member, "peer", dst=member,
                        identify=True, default_delay_ms=defaults[member],
                    )
                )
        return out

    def take_ports(self, ports: Sequence[int]) -> None:
        """Record the ports the network process got for `listeners`."""
        got = iter(ports)
        for member in self.regions:
            if self.mode == "netns":
                self._direct[member] = (next(got), next(got))
                for _ in range(2 * (len(self.regions) - 1)):
                    next(got)
            else:
                for region in self.regions:
                    if region != member:
                        self._views[(region, member)] = next(got)
                self._peers[member] = next(got)

    def netns_targets(self) -> dict[str, dict[str, Target]]:
        """Each member's ports inside its namespace (empty in approximate mode)."""
        if self.mode != "netns":
            return {}
        return {
            member: {
                service: [self.namespaces[member], self.host(i), port]
                for service, port in _SERVICES
            }
            for i, member in enumerate(self.regions)
        }

    def places(self) -> tuple[list[Place], dict[str, dict[str, Target]]]:
        """The members' places, and where the network process finds them (approximate
        mode picks new free ports each time: a start retried after a port clash)."""
        places = []
        targets: dict[str, dict[str, Target]] = {}
        ports = [] if self.mode == "netns" else free_ports(3 * len(self.regions))
        for i, region in enumerate(self.regions):
            if self.mode == "netns":
                host = self.host(i)
                client, metrics = self._direct[region]
                place = Place(
                    region=region,
                    namespace=self.namespaces[region],
                    host=host,
                    client_port=CLIENT_PORT,
                    peer_port=PEER_PORT,
                    metrics_port=METRICS_PORT,
                    advertise_client=f"http://{host}:{CLIENT_PORT}",
                    advertise_peer=f"http://{host}:{PEER_PORT}",
                    direct_client=client,
                    direct_metrics=metrics,
                )
            else:
                client, peer, metrics = ports[3 * i : 3 * i + 3]
                place = Place(
                    region=region,
                    namespace=None,
                    host="127.0.0.1",
                    client_port=client,
                    peer_port=peer,
                    metrics_port=metrics,
                    advertise_client=f"http://127.0.0.1:{client}",
                    advertise_peer=f"http://127.0.0.1:{self._peers[region]}",
                    direct_client=client,
                    direct_metrics=metrics,
                )
                targets[region] = {
                    service: [None, "127.0.0.1", port]
                    for service, port in (("client", client), ("peer", peer), ("metrics", metrics))
                }
            places.append(place)
            self._places[region] = place
        return places, targets

    def endpoint(self, seen_from: str, member: str) -> str:
        """``member``'s client endpoint as a process in region ``seen_from`` reaches it."""
        if self.mode == "netns":
            return f"{self.host(self.regions.index(member))}:{CLIENT_PORT}"
        if seen_from == member:
            return f"127.0.0.1:{self._places[member].direct_client}"
        return f"127.0.0.1:{self._views[(seen_from, member)]}"


class LabMember(EtcdMember):
    """An `EtcdMember` placed in a region: ``endpoint``, ``health`` and ``is_leader`` use
    the lab's direct view; the command line listens and advertises as the place says."""

    def __init__(self, cluster: LocalEtcdCluster, place: Place) -> None:
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
        """The etcd command line, under ``ip netns exec`` in netns mode."""
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


class LabCluster(LocalEtcdCluster):
    """The lab's members, laid out by the lab (``lay_out``) rather than on free ports."""

    def __init__(self, size: int, lay_out: Callable[[], list[Place]], **options: Any) -> None:
        super().__init__(size, **options)
        self._lay_out_places = lay_out

    def _lay_out(self, layout: dict[str, Any] | None) -> None:
        self._token = f"whizorch-lab-{uuid.uuid4().hex[:16]}"
        self._members = tuple(LabMember(self, place) for place in self._lay_out_places())
