"""Value checks for the config schema: each names the dotted field path it checks.

Built on the checks every layer shares (:mod:`whizorch._check`); ``bind_address`` is
theirs, re-exported here for the schema.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any, NoReturn

from whizorch._check import bind_address, invalid, is_int, is_number
from whizorch.errors import ConfigError
from whizorch.etcd import parse_endpoints

__all__ = [
    "bind_address",
    "boolean",
    "config_error",
    "endpoint_list",
    "fail",
    "latency_map",
    "number",
    "optional_string",
    "string",
    "string_list",
    "whole",
]

def config_error(
    path: str, value: object, reason: str, *, source: str | None = None, **extra: Any
) -> ConfigError:
    """A ConfigError reading ``path = value (from source): reason`` (see
    :func:`whizorch._check.invalid`)."""
    return invalid(path, value, reason, source=source, **extra)


def fail(path: str, value: object, reason: str) -> NoReturn:
    """Raise `config_error` (the loader adds where the value came from)."""
    raise invalid(path, value, reason)


def number(path: str, value: object, *, minimum: float = 0.0, strict: bool = True) -> float:
    """A finite number > ``minimum`` (``strict``) or >= ``minimum``, as a float."""
    if is_number(value) and (value > minimum if strict else value >= minimum):
        return float(value)
    op = ">" if strict else ">="
    fail(path, value, f"must be a number {op} {minimum:g}")


def whole(path: str, value: object, *, minimum: int, what: str = "a whole number") -> int:
    """An int >= ``minimum`` (bools and floats refused: ``5.5`` is not a count)."""
    if is_int(value, minimum=minimum):
        return value
    fail(path, value, f"must be {what} >= {minimum}")


def boolean(path: str, value: object) -> bool:
    """True or False (not 0/1: TOML has real booleans)."""
    if isinstance(value, bool):
        return value
    fail(path, value, "must be true or false")


def string(path: str, value: object) -> str:
    """A non-empty string."""
    if isinstance(value, str) and value:
        return value
    fail(path, value, "must be a non-empty string")


def optional_string(path: str, value: object) -> str | None:
    """None or a non-empty string."""
    return None if value is None else string(path, value)


def string_list(path: str, value: object) -> tuple[str, ...]:
    """A list of non-empty strings, as a tuple."""
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    fail(path, value, "must be a list of non-empty strings")


def endpoint_list(path: str, value: object, *, allow_empty: bool) -> tuple[str, ...]:
    """etcd endpoints as ``host:port`` strings, from a list or a ``"a,b"`` string."""
    if isinstance(value, str):
        items: Any = [v for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        fail(path, value, 'must be a list of "host:port" strings or one "a,b" string')
    if not items:
        if allow_empty:
            return ()
        fail(path, value, "at least one etcd endpoint is needed")
    try:
        return parse_endpoints(items)
    except ConfigError as exc:
        fail(path, value, f"{exc.message}: {exc.value!r}")


def latency_map(path: str, value: object) -> Mapping[str, float]:
    """region -> ms (numbers >= 0), as a read-only mapping."""
    if not isinstance(value, Mapping):
        fail(path, value, "must be a table of region = milliseconds")
    out: dict[str, float] = {}
    for region, ms in value.items():
        if not isinstance(region, str) or not region:
            fail(path, value, "region names must be non-empty strings")
        out[region] = number(f"{path}.{region}", ms, strict=False)
    return types.MappingProxyType(out)
