"""The console's settings: where it listens, who may read it, whether it may act."""

from __future__ import annotations

import ipaddress

import attrs

from whizorch.errors import ConfigError

__all__ = ["DEFAULT_PORT", "ConsoleSettings", "is_loopback", "parse_bind"]

DEFAULT_PORT = 8470
TOKEN_ENV = "WHIZORCH_CONSOLE_TOKEN"
MIN_TOKEN_CHARS = 16


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) reaches this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_bind(text: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``host`` or ``:port`` -> (host, port); default
    host 127.0.0.1, default port 8470. Port 0 asks the system for a free one."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("--bind must look like host:port (e.g. 127.0.0.1:8470)", field="bind", value=text)
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    host = host or "127.0.0.1"
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"--bind {text!r}: the port must be a number from 0 to 65535", field="bind", value=text)
    return host, int(port_text)


@attrs.frozen(kw_only=True)
class ConsoleSettings:
    """How one console serves (checked when built)."""

    host: str = "127.0.0.1"
    """The address to listen on; anything but loopback needs a ``token``."""
    port: int = DEFAULT_PORT
    """The port (0: a free one, printed at start)."""
    token: str | None = None
    """A shared secret every request must carry (Bearer header or the login cookie)."""
    allow_actions: bool = False
    """Offer cancel and resubmit (off: the console is read-only, and those routes
    answer 403)."""
    live_interval_s: float = 0.2
    """The least time between two updates sent to one page (changes in between are
    coalesced into the second)."""
    cluster_poll_s: float = 5.0
    """How often the etcd members' own status is asked (they are not keys to watch)."""

    def __attrs_post_init__(self) -> None:
        if self.token is not None and len(self.token) < MIN_TOKEN_CHARS:
            raise ConfigError(
                f"the console token must be at least {MIN_TOKEN_CHARS} characters "
                "(e.g. from `python -c 'import secrets; print(secrets.token_urlsafe())'`)",
                field="token",
            )
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(
                f"refusing to serve the console on {self.host}, which is not a loopback address, without a token: "
                f"pass --token or set {TOKEN_ENV} (or bind 127.0.0.1)",
                field="bind",
                value=self.host,
            )
        if self.live_interval_s < 0 or self.cluster_poll_s <= 0:
            raise ConfigError("live_interval_s must be >= 0 and cluster_poll_s > 0", field="live_interval_s")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"
