"""The region lab's pure parts: regions, the round-trip matrix, links, and when a held
chunk may be delivered. No IO here: `RegionLab` and the lab's network process build on it.

A *link* is one direction between two regions: ``(src, dst)`` with a one-way delay, a
jitter and whether it carries traffic. A round trip between ``a`` and ``b`` is the
delay of ``a -> b`` plus the delay of ``b -> a``; the matrix gives round trips and each
direction gets half.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

import attrs

from whizorch.errors import ConfigError

__all__ = [
    "DEFAULT_REGIONS",
    "DEFAULT_RTT_MS",
    "NAMESPACE_PREFIX",
    "Link",
    "check_regions",
    "default_delay_ms",
    "directory_owner",
    "directory_prefix",
    "find_server_from",
    "jitter_matrix",
    "namespace_name",
    "namespace_owner",
    "parse_pairs",
    "release_at",
    "rtt_matrix",
    "sample_delay_s",
    "stale_namespaces",
]

DEFAULT_REGIONS: tuple[str, ...] = ("eu", "us", "ap")
"""The lab's regions unless told otherwise (the demo's)."""

DEFAULT_RTT_MS: Mapping[str, Mapping[str, float]] = {
    "eu": {"us": 80.0, "ap": 200.0},
    "us": {"ap": 150.0},
}
"""Round trips between the default regions, in milliseconds (a pair given once counts
both ways)."""

NAMESPACE_PREFIX = "wz-"
"""Every network namespace the lab makes is called ``wz-<pid>-<n>-<region>``."""

# region names end up in namespace names (at most 255 bytes, no "/"): keep them short
# and plain, and without "-" so a namespace name splits back into its parts
_REGION_RE = re.compile(r"^[a-z][a-z0-9_]{0,15}$")
_MAX_REGIONS = 200  # member i is 127.0.0.(i+1)
_PAIR_RE = re.compile(r"^\s*([^:=\s]+)\s*:\s*([^:=\s]+)\s*=\s*([^\s]+)\s*$")
_NAMESPACE_RE = re.compile(r"^wz-(\d+)-(\d+)-([a-z][a-z0-9_]*)$")
_DIRECTORY_RE = re.compile(r"^whizorch-lab-(\d+)-[^/]+$")
_SERVER_FROM_RE = re.compile(rb"\r\nX-Server-From:\s*([0-9a-fA-F]{1,16})\r\n", re.IGNORECASE)


@attrs.frozen
class Link:
    """One direction between two regions, as the lab applies it now."""

    src: str
    """The region the bytes leave."""
    dst: str
    """The region the bytes reach."""
    delay_ms: float
    """One-way delay: half the pair's round trip."""
    jitter_ms: float
    """Each chunk's delay is drawn uniformly from ``delay_ms +- jitter_ms``."""
    up: bool
    """``False`` while the direction is cut: nothing gets through until it is healed."""


def check_regions(regions: Sequence[str]) -> tuple[str, ...]:
    """The region names as a tuple; `ConfigError` naming the bad one otherwise."""
    if isinstance(regions, str):
        raise ConfigError("regions must be a sequence of names, not one string", regions=regions)
    names = tuple(regions)
    if not names:
        raise ConfigError("a region lab needs at least one region")
    if len(names) > _MAX_REGIONS:
        raise ConfigError(f"a region lab has at most {_MAX_REGIONS} regions", regions=len(names))
    for name in names:
        if not isinstance(name, str) or not _REGION_RE.match(name):
            raise ConfigError(
                f"region name {name!r} must be 1-16 characters of a-z, 0-9 and _, "
                "starting with a letter (it becomes part of a namespace name)",
                region=name,
            )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"region {duplicates[0]!r} is listed twice", region=duplicates[0])
    return names


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a number of milliseconds, not {value!r}", entry=where)
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"{where} must be a finite number >= 0, not {value!r}", entry=where)
    return number


def _pairs(
    regions: tuple[str, ...], table: Mapping[str, Mapping[str, float]], what: str
) -> dict[frozenset[str], tuple[float, str]]:
    """Each unordered pair in ``table`` -> (value, where it was given)."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{what} must be a mapping {{region: {{region: ms}}}}", entry=what)
    found: dict[frozenset[str], tuple[float, str]] = {}
    for src, row in table.items():
        if src not in regions:
            raise ConfigError(
                f"{what}[{src!r}]: {src!r} is not a region of the lab "
                f"(regions: {', '.join(regions)})",
                entry=f"{what}[{src!r}]",
            )
        if not isinstance(row, Mapping):
            raise ConfigError(
                f"{what}[{src!r}] must be a mapping {{region: ms}}", entry=f"{what}[{src!r}]"
            )
        for dst, value in row.items():
            where = f"{what}[{src!r}][{dst!r}]"
            if dst not in regions:
                raise ConfigError(
                    f"{where}: {dst!r} is not a region of the lab (regions: {', '.join(regions)})",
                    entry=where,
                )
            if dst == src:
                raise ConfigError(
                    f"{where}: a region has no delay to itself (traffic inside a region "
                    "pays none); leave it out",
                    entry=where,
                )
            number = _number(value, where)
            pair = frozenset((src, dst))
            if pair in found and found[pair][0] != number:
                raise ConfigError(
                    f"{where} = {number:g} disagrees with {found[pair][1]} = "
                    f"{found[pair][0]:g}: a round trip is the same both ways",
                    entry=where,
                )
            found[pair] = (number, where)
    return found


def rtt_matrix(
    regions: Sequence[str],
    rtt_ms: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[tuple[str, str], float]:
    """Every ordered pair of distinct regions -> its round trip in milliseconds.

    ``rtt_ms`` is ``{region: {other region: ms}}``; a pair given once counts both ways
    (given twice, both must agree). Every pair must be given: `ConfigError` names the
    missing or bad entry. ``None`` means `DEFAULT_RTT_MS`, which only covers the
    default regions.
    """
    names = check_regions(regions)
    table = rtt_ms
    if table is None:  # the default pairs among these regions
        table = {
            a: {b: ms for b, ms in row.items() if b in names}
            for a, row in DEFAULT_RTT_MS.items()
            if a in names
        }
    found = _pairs(names, table, "rtt_ms")
    out: dict[tuple[str, str], float] = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            got = found.get(frozenset((a, b)))
            if got is None:
                default = " (the default matrix covers eu, us and ap only)" if rtt_ms is None else ""
                raise ConfigError(
                    f"rtt_ms has no round trip between {a!r} and {b!r}: give "
                    f"rtt_ms[{a!r}][{b!r}] in milliseconds{default}",
                    entry=f"rtt_ms[{a!r}][{b!r}]",
                )
            out[(a, b)] = out[(b, a)] = got[0]
    return out


def jitter_matrix(
    regions: Sequence[str],
    jitter_ms: float | Mapping[str, Mapping[str, float]],
    rtt: Mapping[tuple[str, str], float],
) -> dict[tuple[str, str], float]:
    """Every ordered pair -> its jitter (ms): one number for all pairs, or a table like
    ``rtt_ms`` (pairs left out get none). A jitter may not exceed the pair's one-way
    delay (half its round trip), so no chunk is delivered before it was sent."""
    names = check_regions(regions)
    if isinstance(jitter_ms, Mapping):
        given = _pairs(names, jitter_ms, "jitter_ms")
    else:
        number = _number(jitter_ms, "jitter_ms")
        given = {frozenset(pair): (number, "jitter_ms") for pair in rtt}
    out: dict[tuple[str, str], float] = {}
    for (a, b), round_trip in rtt.items():
        value, where = given.get(frozenset((a, b)), (0.0, ""))
        if value > round_trip / 2:
            raise ConfigError(
                f"{where} = {value:g} ms is more than the one-way delay between {a!r} and "
                f"{b!r} ({round_trip / 2:g} ms, half the round trip)",
                entry=where,
            )
        out[(a, b)] = value
    return out


def parse_pairs(specs: Iterable[str], *, what: str) -> dict[str, dict[str, float]]:
    """``["eu:us=80", "us:ap=150"]`` (command-line style) -> ``{"eu": {"us": 80.0}, ...}``."""
    out: dict[str, dict[str, float]] = {}
    for spec in specs:
        found = _PAIR_RE.match(spec)
        if found is None:
            raise ConfigError(
                f"{what} {spec!r} must look like REGION:REGION=MS (e.g. eu:us=80)", entry=spec
            )
        a, b, ms = found.groups()
        try:
            value = float(ms)
        except ValueError:
            raise ConfigError(f"{what} {spec!r}: {ms!r} is not a number", entry=spec) from None
        out.setdefault(a, {})[b] = value
    return out


def default_delay_ms(regions: Sequence[str], rtt: Mapping[tuple[str, str], float]) -> dict[str, float]:
    """Per region, the one-way delay the approximation uses for peer traffic whose sender
    it cannot tell: half the mean round trip to the other regions."""
    out = {}
    for region in regions:
        trips = [ms for (a, _), ms in rtt.items() if a == region]
        out[region] = sum(trips) / len(trips) / 2 if trips else 0.0
    return out


def sample_delay_s(rng: random.Random, delay_ms: float, jitter_ms: float) -> float:
    """One chunk's one-way delay in seconds: ``delay_ms +- jitter_ms``, never negative."""
    if jitter_ms <= 0:
        return delay_ms / 1000
    return max(0.0, rng.uniform(delay_ms - jitter_ms, delay_ms + jitter_ms)) / 1000


def release_at(
    arrival: float, delay: float, previous: float, up_since: float, link_delay: float
) -> float:
    """When a chunk read at ``arrival`` (seconds) may be delivered.

    After its own ``delay``; never before the chunk ahead of it on the same direction of
    the same connection (``previous``: order is kept even when jitter draws a shorter
    delay); and when the link was cut after the chunk arrived and came up again at
    ``up_since``, a full ``link_delay`` after that (as TCP would resend it once the path
    is back). The caller holds the chunk while the link is down.
    """
    release = max(arrival + delay, previous)
    if up_since > arrival:
        release = max(release, up_since + link_delay)
    return release


def find_server_from(data: bytes) -> str | None:
    """The etcd member id (lowercase hex) in an ``X-Server-From`` header of a peer
    request, if ``data`` holds one: etcd sets it on every Raft stream and message."""
    found = _SERVER_FROM_RE.search(data)
    return None if found is None else found.group(1).decode().lower()


def namespace_name(pid: int, lab: int, region: str) -> str:
    """The network namespace of ``region`` in lab number ``lab`` of process ``pid``."""
    return f"{NAMESPACE_PREFIX}{pid}-{lab}-{region}"


def namespace_owner(name: str) -> int | None:
    """The pid of the process whose lab made namespace ``name``, or ``None`` when the
    name is not one a lab makes (then it is never touched)."""
    found = _NAMESPACE_RE.match(name)
    return int(found.group(1)) if found else None


def directory_prefix(pid: int) -> str:
    """The prefix of the temporary directories the labs of process ``pid`` make."""
    return f"whizorch-lab-{pid}-"


def directory_owner(name: str) -> int | None:
    """The pid of the process whose lab made temporary directory ``name`` (``None``:
    not a lab's directory, never touched)."""
    found = _DIRECTORY_RE.match(name)
    return int(found.group(1)) if found else None


def stale_namespaces(
    names: Iterable[str], alive: Callable[[int], bool], *, in_use: Collection[str] = ()
) -> list[str]:
    """The lab namespaces among ``names`` whose owning process is not ``alive``, except
    those ``in_use``; names the lab does not make are never among them."""
    out = []
    for name in names:
        owner = namespace_owner(name)
        if owner is not None and name not in in_use and not alive(owner):
            out.append(name)
    return out
