"""Connection settings for the etcd adapter (frozen attrs objects)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import attrs

from whizorch._check import is_number
from whizorch.errors import ConfigError

__all__ = ["AuthConfig", "EtcdConfig", "TLSConfig", "parse_endpoints"]


def parse_endpoints(value: str | Sequence[str]) -> tuple[str, ...]:
    """Normalise endpoints to ``host:port`` strings.

    Accepts a comma-separated string or a sequence, with or without an ``http://``
    or ``https://`` scheme (the scheme is dropped: TLS is chosen by ``TLSConfig``).
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for raw in items:
        if not isinstance(raw, str):
            raise ConfigError("an etcd endpoint must be a string", field="endpoints", value=raw)
        item = raw.strip()
        for scheme in ("http://", "https://", "unix://"):
            if item.startswith(scheme):
                item = item[len(scheme) :]
        item = item.rstrip("/")
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                "an etcd endpoint must look like host:port", field="endpoints", value=raw
            )
        out.append(item)
    if not out:
        raise ConfigError("at least one etcd endpoint is needed", field="endpoints", value=value)
    return tuple(out)


def _read(path: str | None, field: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {field}: {exc.strerror}", field=field, value=path) from exc


@attrs.frozen(kw_only=True)
class TLSConfig:
    """TLS to etcd; with ``cert_file`` and ``key_file`` also client certificates (mTLS)."""

    ca_file: str | None = None
    """PEM file of the CA that signed etcd's server certificates (None: system roots)."""
    cert_file: str | None = None
    """PEM client certificate for mTLS (etcd ``--client-cert-auth``)."""
    key_file: str | None = None
    """PEM private key of ``cert_file``."""
    server_name: str | None = None
    """Override the name checked against the server certificate (SNI/authority)."""

    def __attrs_post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError(
                "TLS client auth needs both cert_file and key_file",
                field="tls.cert_file" if self.cert_file is None else "tls.key_file",
                value=None,
            )

    def credentials_bytes(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """Read the PEM files: (root CA, client key, client cert)."""
        return (
            _read(self.ca_file, "tls.ca_file"),
            _read(self.key_file, "tls.key_file"),
            _read(self.cert_file, "tls.cert_file"),
        )


@attrs.frozen(kw_only=True)
class AuthConfig:
    """etcd username/password authentication; the token is refreshed when it expires."""

    username: str
    """etcd user name."""
    password: str = attrs.field(repr=False)
    """etcd password (never shown in repr or logs)."""

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.username, str) or not self.username:
            raise ConfigError("auth.username must be a non-empty string", field="auth.username", value=self.username)
        if not isinstance(self.password, str):
            raise ConfigError("auth.password must be a string", field="auth.password", value=type(self.password).__name__)


def _positive(name: str):  # type: ignore[no-untyped-def]
    def check(_inst: object, _attr: object, value: float) -> None:
        if not is_number(value, above=0, finite=False):
            raise ConfigError(f"{name} must be a positive number of seconds", field=name, value=value)

    return check


@attrs.frozen(kw_only=True)
class EtcdConfig:
    """How to reach an etcd cluster.

    >>> EtcdConfig(endpoints="127.0.0.1:2379,127.0.0.1:22379").endpoints
    ('127.0.0.1:2379', '127.0.0.1:22379')
    """

    endpoints: tuple[str, ...] = attrs.field(converter=parse_endpoints)
    """Client URLs of the members (``host:port``; any scheme is dropped)."""
    tls: TLSConfig | None = None
    """TLS settings; None for plain-text gRPC."""
    auth: AuthConfig | None = None
    """Username/password authentication; None when auth is off."""
    timeout_s: float = attrs.field(default=5.0, validator=_positive("timeout_s"))
    """Deadline of each unary call (one attempt) unless the call gives its own."""
    connect_timeout_s: float = attrs.field(default=2.0, validator=_positive("connect_timeout_s"))
    """How long to wait for one endpoint's connection before trying the next."""
    retry_deadline_s: float = attrs.field(default=10.0, validator=_positive("retry_deadline_s"))
    """Total time a safe-to-retry call (reads, idempotent txns) keeps retrying."""
    max_request_bytes: int = 1536 * 1024
    """etcd's ``--max-request-bytes``: larger requests are refused before sending."""
    keepalive_time_s: float = attrs.field(default=10.0, validator=_positive("keepalive_time_s"))
    """gRPC HTTP/2 keepalive ping interval (detects dead connections)."""
    watch_check_s: float = attrs.field(default=1.0, validator=_positive("watch_check_s"))
    """A watch stream silent this long is asked for a progress response: a member that
    is paused or cut off from us (not from its peers) answers nothing and cancels
    nothing, so silence is the only sign."""
    watch_stall_s: float = attrs.field(default=2.0, validator=_positive("watch_stall_s"))
    """No answer to that question within this long: the stream is dropped and every
    watch resumes on the next endpoint from its last revision."""

    @classmethod
    def from_env(cls, default: str = "127.0.0.1:2379") -> EtcdConfig:
        """Build from ``WHIZORCH_ETCD_ENDPOINTS`` (comma-separated), else ``default``."""
        return cls(endpoints=os.environ.get("WHIZORCH_ETCD_ENDPOINTS", default))
