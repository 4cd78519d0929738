"""The ``/metrics`` endpoint (prometheus-client's HTTP server in a daemon thread)."""

from __future__ import annotations

import socket
from typing import Any

import prometheus_client
from prometheus_client.registry import CollectorRegistry

from whizorch._check import bind_address
from whizorch.errors import ConfigError

__all__ = ["MetricsServer", "parse_bind", "serve_metrics"]


def parse_bind(bind: str, *, field: str = "metrics_bind") -> tuple[str, int]:
    """``"host:port"`` (IPv6 as ``"[::1]:9464"``) -> (host, port), naming ``field`` when bad."""
    return bind_address(field, bind)  # one rule for the config file and for code


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
