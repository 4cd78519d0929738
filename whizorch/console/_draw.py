"""Geometry of the timeline's SVG: numbers only, the template writes the elements.

The SVG uses presentation attributes (x, y, width ...), never inline styles, so the
Content-Security-Policy needs no ``'unsafe-inline'``; colours come from classes in
console.css. Every text it shows is escaped by the template like any other.
"""

from __future__ import annotations

from typing import Any

import attrs

from whizorch.console._timeline import Timeline
from whizorch.saga import SagaRecord

__all__ = ["Drawing", "draw"]

WIDTH = 1000
LABEL = 110
LANE = 34
BAR = 20
TOP = 8
AXIS = 26


@attrs.frozen(kw_only=True)
class Drawing:
    width: int
    height: int
    lanes: list[dict[str, Any]]
    bars: list[dict[str, Any]]
    markers: list[dict[str, Any]]
    ticks: list[dict[str, Any]]


def _ticks(span: float) -> float:
    for step in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400):
        if span / step <= 8:
            return step
    return span / 8


def _fmt(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:g} s"
    if seconds < 7200:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:g} h"


def draw(tl: Timeline, rec: SagaRecord, now: float) -> Drawing:
    """Where each lane, bar, marker and tick goes, in a ``WIDTH``-wide SVG."""
    span = max(tl.end - tl.start, 0.001)
    inner = WIDTH - LABEL - 10

    def x(at: float) -> float:
        return round(LABEL + (min(max(at, tl.start), tl.end) - tl.start) / span * inner, 2)

    row = {lane: i for i, lane in enumerate(tl.lanes)}
    lanes = [{"name": lane, "y": TOP + i * LANE, "mid": TOP + i * LANE + LANE / 2 + 4} for i, lane in enumerate(tl.lanes)]
    bars = []
    for b in tl.bars:
        i = row.get(b.lane, len(tl.lanes) - 1)
        x0 = x(b.start)
        x1 = x(b.end if b.end is not None else now)
        w = max(x1 - x0, 3.0)
        took = (b.end if b.end is not None else now) - b.start
        worker = b.worker or "?"
        title = (
            f"{b.step_name} ({b.kind}) attempt {b.attempt} in {b.region}: {b.outcome}, {_fmt(max(took, 0))}\n"
            f"worker {worker}, fence {b.fence if b.fence is not None else '?'}"
            + (f", dispatched at revision {b.revision}" if b.revision is not None else "")
            + (" (put again on another worker)" if b.again else "")
            + (f"\nerror: {b.error}" if b.error else "")
        )
        label = f"{b.step_name} #{b.attempt}"
        bars.append({
            "x": x0, "y": TOP + i * LANE + (LANE - BAR) / 2, "w": round(w, 2), "h": BAR, "cls": f"bar-{b.outcome}",
            "title": title, "label": label if w > 8 * len(label) else "", "tx": round(x0 + 4, 2),
            "ty": TOP + i * LANE + LANE / 2 + 4, "bar": b,
        })  # fmt: skip
    height = TOP + len(tl.lanes) * LANE + AXIS
    markers = []
    for k, m in enumerate(tl.markers):
        mx = x(m.at)
        cost = f" ({_fmt(m.cost_s)})" if m.cost_s is not None else ""
        right = mx > LABEL + inner * 0.7  # near the right edge the label goes left of the line
        markers.append({
            "x": mx, "y1": 2, "y2": height - AXIS, "cls": f"marker-{m.kind}", "title": m.label + cost,
            "label": m.kind + cost, "marker": m, "tx": round(mx - 3 if right else mx + 3, 2),
            "ty": 11 + 11 * (k % 3), "anchor": "end" if right else "start",
        })  # fmt: skip
    step = _ticks(span)
    ticks: list[dict[str, Any]] = []
    t = 0.0
    while t <= span + 1e-9 and len(ticks) < 12:
        ticks.append({"x": x(tl.start + t), "label": _fmt(round(t, 3)) if t else "0"})
        t += step
    return Drawing(width=WIDTH, height=height, lanes=lanes, bars=bars, markers=markers, ticks=ticks)
