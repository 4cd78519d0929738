"""Value checks every layer shares (the bottom layer, beside ``errors``).

Predicates that tell a number from a bool (``True`` is an ``int`` to Python, never a
count or a duration here), and :func:`invalid`, the one shape of a refused value:
``field = value: reason`` as a :class:`~whizorch.errors.ConfigError` with ``field``,
``value`` and ``reason`` set. The configuration loader adds where a value came from.
"""

from __future__ import annotations

import math
from typing import TypeGuard

from whizorch.errors import ConfigError

__all__ = ["bind_address", "invalid", "is_int", "is_number"]

REDACTED = "<redacted>"


def is_int(value: object, *, minimum: int | None = None) -> TypeGuard[int]:
    """An ``int`` (not a bool), at least ``minimum`` when given."""
    return isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)


def is_number(
    value: object, *, minimum: float | None = None, above: float | None = None, finite: bool = True
) -> TypeGuard[int | float]:
    """An ``int`` or ``float`` (not a bool, not NaN; finite unless ``finite=False``), at
    least ``minimum`` and more than ``above`` when given."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        return False
    if finite and math.isinf(value):
        return False
    return (minimum is None or value >= minimum) and (above is None or value > above)


def invalid(field: str, value: object, reason: str, *, source: str | None = None, **extra: object) -> ConfigError:
    """A ConfigError reading ``field = value (from source): reason``.

    ``field``, ``value``, ``source``, ``reason`` (and ``extra``) are also attributes.
    ``source`` is a file path, an environment variable name, or ``"default"``; a
    ``password`` field's value is never shown.
    """
    shown = REDACTED if field.rpartition(".")[2] == "password" else value
    where = "" if source is None else " (default)" if source == "default" else f" (from {source})"
    message = f"{field} = {shown!r}{where}: {reason}"
    exc = ConfigError(message, field=field, value=shown, source=source, reason=reason, **extra)
    # the message already names field, value and source: don't repeat them as "(k=v ...)"
    exc.args = (message,)
    return exc


def bind_address(field: str, value: object) -> tuple[str, int]:
    """``"host:port"`` (IPv6 as ``"[::1]:9464"``) -> (host, port), naming ``field`` when bad."""
    if isinstance(value, str) and ":" in value:
        host, _, port_text = value.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if host and port_text.isdigit() and int(port_text) <= 65535:
            return host, int(port_text)
    raise invalid(field, value, 'must look like "host:port" with a non-empty host and a port in 0-65535')
