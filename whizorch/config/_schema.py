"""The deployment configuration: frozen attrs objects, one per TOML section.

Each object validates itself on construction and names the dotted field path
(``consensus.lease_ttl_s``) in its errors; `load_config` adds where a bad value came
from. Values are normalised in ``__attrs_post_init__`` (ints to floats for seconds,
lists to tuples, ``"a,b"`` endpoint strings split), the way the attrs docs show for
frozen classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import attrs

from whizorch.config._check import (
    bind_address,
    boolean,
    endpoint_list,
    fail,
    latency_map,
    number,
    optional_string,
    string_list,
    whole,
)
from whizorch.coord import LeaseTiming
from whizorch.errors import ConfigError
from whizorch.etcd import AuthConfig, EtcdConfig, TLSConfig
from whizorch.saga import Keys, Router, Settings

__all__ = [
    "ConsensusConfig",
    "EtcdSection",
    "FailoverConfig",
    "MonitoringConfig",
    "RegionConfig",
    "WhizorchConfig",
]

# etcd refuses a longer --election-timeout (see etcd's tuning guide)
_MAX_ELECTION_MS = 50_000


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # normalising a frozen instance while it is built


@attrs.frozen(kw_only=True)
class EtcdSection:
    """``[etcd]``: how every whizorch process reaches the etcd cluster."""

    endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    """Client endpoints (``host:port``; a scheme is dropped), as a list or ``"a,b"``."""
    timeout_s: float = 5.0
    """Deadline of each etcd call (one attempt) unless the call gives its own."""
    tls: bool = False
    """Use TLS even without ``ca_file`` (the system's roots); implied by any ``*_file``."""
    ca_file: str | None = None
    """PEM file of the CA that signed etcd's server certificates."""
    cert_file: str | None = None
    """PEM client certificate for mTLS; needs ``key_file``."""
    key_file: str | None = None
    """PEM private key of ``cert_file``."""
    username: str | None = None
    """etcd user name (auth on); needs ``password``."""
    password: str | None = attrs.field(default=None, repr=False)
    """etcd password (never shown in repr or error messages); needs ``username``."""

    def __attrs_post_init__(self) -> None:
        _set(self, "endpoints", endpoint_list("etcd.endpoints", self.endpoints, allow_empty=False))
        _set(self, "timeout_s", number("etcd.timeout_s", self.timeout_s))
        boolean("etcd.tls", self.tls)
        for name in ("ca_file", "cert_file", "key_file", "username"):
            optional_string(f"etcd.{name}", getattr(self, name))
        if self.password is not None and not isinstance(self.password, str):
            fail("etcd.password", self.password, "must be a string")
        if (self.cert_file is None) != (self.key_file is None):
            given, missing = ("key_file", "cert_file") if self.cert_file is None else ("cert_file", "key_file")
            fail(f"etcd.{given}", getattr(self, given), f"needs etcd.{missing} too (mTLS needs both)")
        if (self.username is None) != (self.password is None):
            given, missing = ("password", "username") if self.username is None else ("username", "password")
            fail(f"etcd.{given}", getattr(self, given), f"needs etcd.{missing} too (auth needs both)")

    def etcd_config(self, preferred: Sequence[str] = ()) -> EtcdConfig:
        """The adapter's `EtcdConfig`: ``preferred`` endpoints first, then the others.

        Duplicates are dropped (the first place wins); the client tries endpoints in
        this order, so pass the ones near the process's region.
        """
        first = endpoint_list("preferred", preferred, allow_empty=True)
        tls = None
        if self.tls or self.ca_file or self.cert_file:
            tls = TLSConfig(ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file)
        auth = None
        if self.username is not None and self.password is not None:
            auth = AuthConfig(username=self.username, password=self.password)
        return EtcdConfig(
            endpoints=tuple(dict.fromkeys((*first, *self.endpoints))),
            tls=tls,
            auth=auth,
            timeout_s=self.timeout_s,
        )


@attrs.frozen(kw_only=True)
class RegionConfig:
    """``[regions.<name>]``: one region (the table key is its name)."""

    name: str
    """Region name, as workers register it (no ``/``: it is part of etcd keys)."""
    endpoints: tuple[str, ...] = ()
    """etcd endpoints near this region, tried first by its processes (may be empty)."""
    latency_ms: Mapping[str, float] = attrs.field(factory=dict, hash=False)
    """Measured latency to other regions: ``{other region: ms}`` (numbers >= 0)."""
    cost: float = 0.0
    """Relative cost of running a step here (>= 0); the router subtracts ``cost * 10``."""
    compliance: tuple[str, ...] = ()
    """Compliance tags the region satisfies (``"gdpr"``, ``"pci"`` ...)."""

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            fail("regions", self.name, "a region name must be a non-empty string without '/'")
        at = f"regions.{self.name}"
        _set(self, "endpoints", endpoint_list(f"{at}.endpoints", self.endpoints, allow_empty=True))
        _set(self, "latency_ms", latency_map(f"{at}.latency_ms", self.latency_ms))
        _set(self, "cost", number(f"{at}.cost", self.cost, strict=False))
        _set(self, "compliance", string_list(f"{at}.compliance", self.compliance))


@attrs.frozen(kw_only=True)
class ConsensusConfig:
    """``[consensus]``: lease timing of sessions, and a local etcd's Raft timing."""

    lease_ttl_s: int = 5
    """TTL of each process's etcd lease: a dead process's leadership, locks and claims
    are released this long after it stops (whole seconds >= 1)."""
    keepalive_interval_s: float | None = None
    """How often the lease is refreshed; None: ``lease_ttl_s / 3``."""
    step_down_margin_s: float | None = None
    """A session declares itself lost this long before its lease can expire at etcd;
    None: ``lease_ttl_s / 5``."""
    etcd_heartbeat_ms: int = 100
    """etcd's ``--heartbeat-interval``; only when whizorch starts a local etcd."""
    etcd_election_ms: int = 1000
    """etcd's ``--election-timeout`` (>= 5 heartbeats, <= 50000); only when whizorch
    starts a local etcd."""
    contact_deadline_s: float = 0.6
    """Split-brain detection: an orchestrator leader whose quorum probes have not
    answered for this long pauses its writes (safe mode) until contact returns; 0
    turns it off. Set it above the longest gap between answers you expect."""
    shards: int = 4
    """How many shards a namespace is cut into when its first orchestrator creates it
    (1-1024; fixed from then on: the namespace's ``<ns>/meta`` keeps it). Each shard
    has its own leader; orchestrators share the shards evenly."""

    lease: LeaseTiming = attrs.field(init=False, repr=False, eq=False)
    """The three lease fields as one checked `whizorch.coord.LeaseTiming` (defaults
    filled in): what a role and its sessions take."""

    def __attrs_post_init__(self) -> None:
        margin, interval = self.step_down_margin_s, self.keepalive_interval_s
        if margin is not None:
            _set(self, "step_down_margin_s", number("consensus.step_down_margin_s", margin, strict=False))
        if interval is not None:
            _set(self, "keepalive_interval_s", number("consensus.keepalive_interval_s", interval))
        try:
            lease = LeaseTiming.of(
                self.lease_ttl_s, step_down_margin_s=self.step_down_margin_s,
                keepalive_interval_s=self.keepalive_interval_s,
            )
        except ConfigError as exc:
            field = {"ttl_s": "lease_ttl_s"}.get(exc.field or "", exc.field)
            fail(f"consensus.{field}", exc.value, exc.reason or exc.message)
        _set(self, "lease", lease)
        contact = number("consensus.contact_deadline_s", self.contact_deadline_s, strict=False)
        if 0 < contact < 0.05:
            fail("consensus.contact_deadline_s", contact, "must be 0 (off) or at least 0.05 s")
        _set(self, "contact_deadline_s", contact)
        whole("consensus.shards", self.shards, minimum=1)
        if self.shards > 1024:
            fail("consensus.shards", self.shards, "must be at most 1024")
        beat = whole("consensus.etcd_heartbeat_ms", self.etcd_heartbeat_ms, minimum=1)
        election = whole("consensus.etcd_election_ms", self.etcd_election_ms, minimum=1)
        if election < 5 * beat:
            fail("consensus.etcd_election_ms", election, f"etcd needs >= 5 * etcd_heartbeat_ms = {5 * beat}")
        if election > _MAX_ELECTION_MS:
            fail("consensus.etcd_election_ms", election, f"etcd accepts at most {_MAX_ELECTION_MS}")

    def local_cluster_kwargs(self) -> dict[str, int]:
        """``heartbeat_ms``/``election_ms`` for ``whizorch.testing.LocalEtcdCluster``."""
        return {"heartbeat_ms": self.etcd_heartbeat_ms, "election_ms": self.etcd_election_ms}


@attrs.frozen(kw_only=True)
class FailoverConfig:
    """``[failover]``: what happens when a step's region dies or none is available."""

    policy: Literal["closest", "score"] = "closest"
    """Where a step moves when its region dies: ``"closest"`` (lowest configured
    latency from the dead region) or ``"score"`` (re-route by the router's score)."""
    max_retries: int | None = None
    """How many times one saga may be moved to another region; None: each saga type's
    own ``max_failovers`` (when set, the lower of the two applies)."""
    no_region_timeout_s: float = 30.0
    """How long a step waits for a healthy, compliant region before failing."""
    no_worker_timeout_s: float = 600.0
    """How long a step waits for a live worker that has its saga's definition (the
    version the saga is pinned to) before the saga fails naming it (a rolling deploy
    must bring such a worker up within it)."""

    def __attrs_post_init__(self) -> None:
        if self.policy not in ("closest", "score"):
            fail("failover.policy", self.policy, "must be 'closest' or 'score'")
        if self.max_retries is not None:
            whole("failover.max_retries", self.max_retries, minimum=0)
        _set(self, "no_region_timeout_s", number("failover.no_region_timeout_s", self.no_region_timeout_s))
        _set(self, "no_worker_timeout_s", number("failover.no_worker_timeout_s", self.no_worker_timeout_s))

    def router(self, regions: Sequence[RegionConfig] = (), *, home_region: str | None = None) -> Router:
        """A `whizorch.saga.Router` with the regions' latency matrix and this policy."""
        latency = {r.name: dict(r.latency_ms) for r in regions if r.latency_ms}
        return Router(
            latency_ms=latency, home_region=home_region, failover_policy=self.policy, regions={r.name for r in regions}
        )

    def settings(self) -> Settings:
        """The saga machine's `whizorch.saga.Settings`."""
        return Settings(
            no_region_timeout_s=self.no_region_timeout_s, no_worker_timeout_s=self.no_worker_timeout_s,
            max_failovers=self.max_retries,
        )


@attrs.frozen(kw_only=True)
class MonitoringConfig:
    """``[monitoring]``: Prometheus metrics and OpenTelemetry tracing."""

    metrics: bool = False
    """Serve Prometheus metrics (``whizorch_*``) at ``http://<metrics_bind>/metrics``."""
    metrics_bind: str = "127.0.0.1:9464"
    """``host:port`` of the metrics endpoint (IPv6 as ``[::1]:9464``; port 0: any)."""
    tracing: bool = False
    """Emit OpenTelemetry spans (needs the OpenTelemetry API; an SDK to export them)."""

    def __attrs_post_init__(self) -> None:
        boolean("monitoring.metrics", self.metrics)
        bind_address("monitoring.metrics_bind", self.metrics_bind)
        boolean("monitoring.tracing", self.tracing)

    @property
    def metrics_address(self) -> tuple[str, int]:
        """``metrics_bind`` as (host, port), IPv6 brackets removed."""
        return bind_address("monitoring.metrics_bind", self.metrics_bind)


_SECTIONS: dict[str, type] = {
    "etcd": EtcdSection,
    "consensus": ConsensusConfig,
    "failover": FailoverConfig,
    "monitoring": MonitoringConfig,
}


@attrs.frozen(kw_only=True)
class WhizorchConfig:
    """A whole deployment's configuration (what `load_config` returns)."""

    namespace: str = "whizorch"
    """Prefix of every whizorch key in etcd (non-empty, no trailing ``/``)."""
    etcd: EtcdSection = attrs.field(factory=EtcdSection)
    """``[etcd]``: connection to etcd."""
    regions: tuple[RegionConfig, ...] = ()
    """``[regions.<name>]``: the regions, in file order."""
    consensus: ConsensusConfig = attrs.field(factory=ConsensusConfig)
    """``[consensus]``: lease and Raft timing."""
    failover: FailoverConfig = attrs.field(factory=FailoverConfig)
    """``[failover]``: failover policy and limits."""
    monitoring: MonitoringConfig = attrs.field(factory=MonitoringConfig)
    """``[monitoring]``: metrics and tracing."""

    def __attrs_post_init__(self) -> None:
        try:
            Keys(self.namespace)  # the key layout's own rule
        except ConfigError:
            fail("namespace", self.namespace, "must be a non-empty string without a trailing '/'")
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                fail(name, getattr(self, name), f"must be a {cls.__name__}")
        if not isinstance(self.regions, (list, tuple)) or not all(
            isinstance(r, RegionConfig) for r in self.regions
        ):
            fail("regions", self.regions, "must be a list of RegionConfig")
        _set(self, "regions", tuple(self.regions))
        names = [r.name for r in self.regions]
        for region in self.regions:
            if names.count(region.name) > 1:
                fail(f"regions.{region.name}", region.name, "is configured twice")
            for other, ms in region.latency_ms.items():
                if other not in names:
                    fail(
                        f"regions.{region.name}.latency_ms.{other}", ms,
                        f"{other!r} is not a configured region (configured: {', '.join(names)})",
                    )

    def region(self, name: str) -> RegionConfig | None:
        """The region called ``name``, or None."""
        return next((r for r in self.regions if r.name == name), None)

    def etcd_config(self, region: str | None = None) -> EtcdConfig:
        """The adapter's `EtcdConfig`, with ``region``'s endpoints tried first."""
        if region is None:
            return self.etcd.etcd_config()
        found = self.region(region)
        if found is None:
            known = ", ".join(r.name for r in self.regions) or "none"
            fail("region", region, f"is not a configured region (configured: {known})")
        return self.etcd.etcd_config(preferred=found.endpoints)

    def router(self, *, home_region: str | None = None) -> Router:
        """A `whizorch.saga.Router` from the regions' latencies and the failover policy."""
        return self.failover.router(self.regions, home_region=home_region)

    def settings(self) -> Settings:
        """The saga machine's `whizorch.saga.Settings` from ``[failover]``."""
        return self.failover.settings()
