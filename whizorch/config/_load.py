"""`load_config`: defaults < TOML file < environment, every error naming its source."""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from typing import Any

import attrs

from whizorch.config._check import config_error
from whizorch.config._schema import _SECTIONS, RegionConfig, WhizorchConfig
from whizorch.errors import ConfigError

__all__ = ["CONFIG_ENV", "env_vars", "load_config"]

CONFIG_ENV = "WHIZORCH_CONFIG"
"""Names the TOML file when ``load_config`` is given no path."""

_REGION_KEYS = ("endpoints", "latency_ms", "cost", "compliance")
_TOP_KEYS = ("namespace", *_SECTIONS, "regions")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def env_vars() -> dict[str, tuple[str, str]]:
    """Every variable `load_config` reads besides ``WHIZORCH_CONFIG``: name -> (section, field).

    ``WHIZORCH_NAMESPACE``, then ``WHIZORCH_<SECTION>_<FIELD>`` for each field of
    ``[etcd]``, ``[consensus]``, ``[failover]`` and ``[monitoring]``.
    """
    out = {"WHIZORCH_NAMESPACE": ("", "namespace")}
    for section, cls in _SECTIONS.items():
        for name in _settable(cls):
            out[f"WHIZORCH_{section}_{name}".upper()] = (section, name)
    return out


def _settable(cls: type) -> tuple[str, ...]:
    """A section's fields a file or the environment sets (not those it derives)."""
    return tuple(f.name for f in attrs.fields(cls) if f.init)


def load_config(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> WhizorchConfig:
    """Load the configuration: defaults, then the TOML file, then the environment.

    ``path`` defaults to ``$WHIZORCH_CONFIG`` (no file when neither is set). ``env``
    defaults to ``os.environ``; only the variables `env_vars` lists are read, so other
    ``WHIZORCH_*`` variables (``WHIZORCH_ETCD_BIN``, ``WHIZORCH_ETCD_BACKEND`` ...)
    are ignored. Unknown keys in the file are errors. Every error is a
    `~whizorch.errors.ConfigError` naming the field, the value and where it came from.
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path is not None:
        _from_file(_read(os.fspath(path), "path"), os.fspath(path), raw, sources)
    elif env.get(CONFIG_ENV):
        _from_file(_read(env[CONFIG_ENV], CONFIG_ENV), env[CONFIG_ENV], raw, sources)
    _from_env(env, raw, sources)
    try:
        sections = {name: cls(**raw.get(name, {})) for name, cls in _SECTIONS.items()}
        regions = tuple(RegionConfig(name=n, **t) for n, t in raw.get("regions", {}).items())
        top = {"namespace": raw["namespace"]} if "namespace" in raw else {}
        return WhizorchConfig(**top, regions=regions, **sections)
    except ConfigError as exc:
        if exc.reason is None or exc.source is not None or exc.field is None:
            raise
        # the same error, now saying where the value came from; chaining would repeat it
        raise config_error(exc.field, exc.value, exc.reason, source=_source(exc.field, sources)) from None


def _read(name: str, via: str) -> dict[str, Any]:
    try:
        with open(name, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise config_error(via, name, f"cannot read the config file: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        found = re.search(r"line (\d+)", str(exc))
        line = int(found.group(1)) if found else None
        raise config_error(via, name, f"not valid TOML: {exc}", line=line) from exc


def _table(path: str, value: object, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise config_error(path, value, f"must be a table ([{path}])", source=source)
    return value


def _unknown(path: str, value: object, known: tuple[str, ...], source: str) -> ConfigError:
    prefix, _, key = path.rpartition(".")
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        hint = f"did you mean {prefix + '.' if prefix else ''}{close[0]}?"
    else:
        hint = f"expected one of: {', '.join(known)}"
    return config_error(path, value, f"unknown key; {hint}", source=source)


def _from_file(data: dict[str, Any], source: str, raw: dict[str, Any], sources: dict[str, str]) -> None:
    for key, value in data.items():
        if key == "namespace":
            raw[key], sources[key] = value, source
        elif key in _SECTIONS:
            known = _settable(_SECTIONS[key])
            for name, item in _table(key, value, source).items():
                if name not in known:
                    raise _unknown(f"{key}.{name}", item, known, source)
                raw.setdefault(key, {})[name] = item
                sources[f"{key}.{name}"] = source
        elif key == "regions":
            sources[key] = source
            for region, table in _table(key, value, source).items():
                for name, item in _table(f"regions.{region}", table, source).items():
                    if name == "name":
                        raise config_error(
                            f"regions.{region}.name", item,
                            "unknown key; a region's name is its table key", source=source,
                        )
                    if name not in _REGION_KEYS:
                        raise _unknown(f"regions.{region}.{name}", item, _REGION_KEYS, source)
                raw.setdefault("regions", {})[region] = dict(table)
        else:
            raise _unknown(key, value, _TOP_KEYS, source)


def _from_env(env: Mapping[str, str], raw: dict[str, Any], sources: dict[str, str]) -> None:
    for var, (section, name) in env_vars().items():
        if var not in env:
            continue
        if not section:
            raw[name], sources[name] = env[var], var
            continue
        path = f"{section}.{name}"
        hint = typing.get_type_hints(_SECTIONS[section])[name]
        raw.setdefault(section, {})[name] = _coerce(hint, env[var], path, var)
        sources[path] = var


def _coerce(hint: Any, text: str, path: str, var: str) -> Any:
    """An environment string as the field's type; an empty string is None where allowed."""
    args = typing.get_args(hint)
    if type(None) in args:
        if not text.strip():
            return None
        hint = next(a for a in args if a is not type(None))
    word = text.strip()
    if hint is bool:
        if word.lower() in _TRUE + _FALSE:
            return word.lower() in _TRUE
        raise config_error(path, text, f"must be one of {'/'.join(_TRUE + _FALSE)}", source=var)
    if hint is int:
        try:
            return int(word)
        except ValueError:
            raise config_error(path, text, "must be a whole number", source=var) from None
    if hint is float:
        try:
            return float(word)
        except ValueError:
            raise config_error(path, text, "must be a number", source=var) from None
    if typing.get_origin(hint) is tuple:
        return tuple(item.strip() for item in text.split(",") if item.strip())
    return text  # str, or a Literal the section checks


def _source(path: str, sources: Mapping[str, str]) -> str:
    """Where ``path`` (or the table holding it) was set; ``"default"`` when nowhere."""
    while path not in sources:
        if "." not in path:
            return "default"
        path = path.rpartition(".")[0]
    return sources[path]
