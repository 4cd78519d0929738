"""The ``/metrics`` endpoint (prometheus-client's HTTP server in a daemon thread)."""

from __future__ import annotations

import socket
from typing import Any

import prometheus_client
from prometheus_client.registry import CollectorRegistry

from whizorch.errors import ConfigError

__all__ = ["MetricsServer", "parse_bind", "serve_metrics"]


def parse_bind(bind: str, *, field: str = "metrics_bind") -> tuple[str, int]:
    """``"host:port"`` (IPv6 as ``"[::1]:9464"``) -> (host, port), naming the field when bad."""
    if not isinstance(bind, str) or ":" not in bind:
        raise ConfigError("must look like host:port", field=field, value=bind)
    host, _, port_text = bind.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not host or not 0 <= port <= 65535:
        raise ConfigError("must look like host:port with a port in 0-65535", field=field, value=bind)
    return host, port


class MetricsServer:
    """A running ``/metrics`` endpoint; ``close()`` (or ``with``) stops it."""

    def __init__(self, server: Any, thread: Any) -> None:
        self._server = server
        self._thread = thread
        self.host, self.port = server.server_address[:2]
        """Where it listens (the real port when 0 was asked for)."""

    @property
    def url(self) -> str:
        """The endpoint's URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving. Idempotent."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_metrics(bind: str = "127.0.0.1:9464", registry: CollectorRegistry | None = None) -> MetricsServer:
    """Serve ``registry`` (default: prometheus-client's global one) at ``http://bind/metrics``."""
    host, port = parse_bind(bind)
    try:
        server, thread = prometheus_client.start_http_server(
            port, addr=host, registry=registry if registry is not None else prometheus_client.REGISTRY
        )
    except (OSError, socket.gaierror) as exc:
        raise ConfigError(f"cannot serve metrics on {bind}: {exc}", field="metrics_bind", value=bind) from exc
    return MetricsServer(server, thread)
