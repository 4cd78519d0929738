"""How a time and a duration read, in every view (the CLI's tables, the web console):
one format each, so a figure reads the same wherever a user meets it."""

from __future__ import annotations

import datetime

__all__ = ["fmt_duration", "fmt_time"]


def fmt_duration(seconds: float | None) -> str:
    """``0.25s``, ``12.3s``, ``4m05s``, ``2h03m``, ``3d04h``; ``-`` for None."""
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.2f}s"
    if s < 60:
        return f"{s:.1f}s"
    whole = int(s)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def fmt_time(at: float | None) -> str:
    """A wall-clock time as ISO 8601 UTC to the millisecond; ``-`` for None."""
    if at is None:
        return "-"
    return datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
