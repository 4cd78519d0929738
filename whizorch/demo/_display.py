"""The saga demo's two faces: a rich live panel on a terminal, plain lines elsewhere.

Both take the same calls: ``log(text)`` for an event, ``tick()`` a few times a second,
``summary(data)`` at the end. Plain output is one greppable line per event
(``[ 10.1s] KILL region us ...``; ``[ setup]`` before the saga stream starts) and a
progress line every few seconds; it is what tests, CI and pipes see.
"""

from __future__ import annotations

import collections
import sys
import time
from types import TracebackType
from typing import Any, Protocol, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from whizorch.demo._report import Tally, summary_rows
from whizorch.demo._shards import shard_list

__all__ = ["Display", "LiveDisplay", "PlainDisplay"]

_STATUSES = ("in flight", "completed", "compensated", "failed", "not submitted")


class Display(Protocol):
    """What the runner calls."""

    def __enter__(self) -> Display: ...

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None: ...

    def log(self, text: str, *, style: str = "") -> None:
        """One event line."""

    def tick(self) -> None:
        """Called a few times a second from the event loop."""

    def summary(self, data: dict[str, Any]) -> None:
        """Print the final summary."""


def _stamp(t: Tally) -> str:
    return "[ setup]" if t.run_start is None else f"[{t.now():5.1f}s]"


def _progress_line(t: Tally, duration_s: float) -> str:
    c = t.counts()
    done = min(100, int(100 * t.now() / duration_s)) if duration_s > 0 else 100
    board = t.shards
    return (
        f"progress {done:3d}% | submitted {c['submitted']}, in flight {c['in flight']} | "
        f"completed {c['completed']}, compensated {c['compensated']}, failed {c['failed']} | "
        f"shards led {board.led}/{board.count} | healthy {','.join(t.healthy) or '-'} | "
        f"failovers {len(t.failovers)}"
    )


class PlainDisplay:
    """Line-per-event text, for pipes, CI and tests (and ``--plain``)."""

    def __init__(self, tally: Tally, duration_s: float, *, out: TextIO | None = None) -> None:
        self.tally = tally
        self.duration_s = duration_s
        self.out = out or sys.stdout
        self.every_s = max(2.0, duration_s / 10)
        self._last = 0.0

    def __enter__(self) -> PlainDisplay:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        return None

    def log(self, text: str, *, style: str = "") -> None:
        print(f"{_stamp(self.tally)} {text}", file=self.out, flush=True)

    def tick(self) -> None:
        t = self.tally
        if t.run_start is None or t.phase not in ("running", "draining"):
            return
        now = t.now()
        if now - self._last >= self.every_s:
            self._last = now
            self.log(_progress_line(t, self.duration_s))

    def summary(self, data: dict[str, Any]) -> None:
        print("\n== summary ==", file=self.out)
        for label, text in summary_rows(data):
            print(f"{label:<12} {text}", file=self.out)
        self.out.flush()


class LiveDisplay:
    """A rich panel redrawn in place: leader, sagas, regions, failovers, progress, events."""

    def __init__(self, tally: Tally, duration_s: float, *, title: str, console: Console | None = None) -> None:
        self.tally = tally
        self.duration_s = duration_s
        self.title = title
        self.console = console or Console()
        self.events: collections.deque[Text] = collections.deque(maxlen=10)
        # refreshed from the event loop only (tick): the tally is never read from
        # rich's refresh thread while the loop changes it
        self.live = Live(console=self.console, auto_refresh=False, transient=False, redirect_stderr=True)
        self._last = 0.0

    def __enter__(self) -> LiveDisplay:
        self.live.update(self._render())
        self.live.start(refresh=True)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.live.update(self._render(), refresh=True)
        self.live.stop()

    def log(self, text: str, *, style: str = "") -> None:
        self.events.append(Text(f"{_stamp(self.tally)} {text}", style=style))
        self.tick(force=True)

    def tick(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= 0.2:
            self._last = now
            self.live.update(self._render(), refresh=True)

    def _render(self) -> RenderableType:
        t = self.tally
        c = t.counts()
        elapsed = min(t.now(), self.duration_s)
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=self.duration_s, completed=elapsed, width=40),
            Text(f"{elapsed:4.1f} / {self.duration_s:g} s  {t.phase}", style="bold"),
        )
        shards = _shards_table(t)

        sagas = Table(title="sagas", title_justify="left", show_header=False, box=None)
        sagas.add_row("submitted", str(c["submitted"]))
        for status in _STATUSES:
            if status != "not submitted" or c[status]:
                sagas.add_row(status, str(c[status]), style={"failed": "red", "compensated": "yellow"}.get(status, ""))

        regions = Table(title="regions", title_justify="left", box=None)
        for col in ("region", "workers", "routing", "steps run"):
            regions.add_column(col)
        for region, workers in t.workers.items():
            running = sum(1 for w in workers if w[2])
            up = region in t.healthy
            routing = Text("down", style="red") if not up else (
                Text("healthy", style="green") if running else Text("lease expiring", style="yellow")
            )
            regions.add_row(
                region, f"{running}/{len(workers)}", routing,
                str(t.steps_by_region.get(region, 0)),
            )

        fo = Table(title=f"failovers ({len(t.failovers)})", title_justify="left", show_header=False, box=None)
        for f in t.failovers[-5:]:
            at = t.since_run(f["_at"]) or 0.0
            fo.add_row(f"{at:5.1f}s", str(f.get("saga_id")), f"#{f.get('step')}", f"{f.get('from')} -> {f.get('to')}")

        middle = Table.grid(padding=(0, 4))
        below: list[RenderableType] = []
        if self.console.width >= 120:
            middle.add_row(sagas, regions, fo)
        else:  # an 80-column terminal: the failovers go below
            middle.add_row(sagas, regions)
            below = [Text(""), fo]
        where = Text(f"etcd {t.etcd or '?'} {','.join(t.endpoints)}   namespace {t.namespace}", style="dim")
        top = Group(bar, where, shards, Text(""), middle, *below, Text(""), Text("events", style="bold"))
        # the newest events that fit the terminal's height (a panel taller than the
        # terminal is cut at the bottom, where the newest are)
        height = len(self.console.render_lines(top, self.console.options.update_width(self.console.width - 4)))
        room = max(3, min(len(self.events), self.console.height - height - 2))
        return Panel(Group(top, *list(self.events)[-room:]), title=self.title, border_style="blue")

    def summary(self, data: dict[str, Any]) -> None:
        table = Table(show_header=False, box=None, padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        for label, text in summary_rows(data, wan_table=False):
            style = ("green" if data["ok"] else "red") if label == "verdict" else ""
            table.add_row(label, Text(text, style=style))
        self.console.print(Panel(table, title="summary", border_style="green" if data["ok"] else "red"))
        if data.get("wan"):
            self.console.print(_wan_panel(data["wan"]))


def _shards_table(t: Tally) -> RenderableType:
    """Each orchestrator and the shards it leads (``*``: taken over after the kill); the
    killed one and what became of its shards, those still waiting timed."""
    board = t.shards
    by = board.led_by([node for node, _, _ in t.orchestrators])
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    led = board.led
    title = Text(f"shards {led}/{board.count} led", style="bold " + ("green" if led == board.count else "red"))
    for node, pid, alive in t.orchestrators:
        mine = by.get(node, [])
        text = shard_list(mine, marked=[k for k in mine if k in board.moves]) if mine else "-"
        if not alive:
            held = f", led {shard_list(board.victim_shards)}" if node == board.victim else ""
            grid.add_row(node, f"pid {pid}", Text(f"KILLED{held}", style="red"))
        else:
            grid.add_row(node, f"pid {pid}", text)
    parts: list[RenderableType] = [title, grid]
    if board.victim is not None:
        style = "green" if board.all_moved else "yellow"
        parts.append(Text(f"{board.victim}'s shards: {board.moves_text(now=time.monotonic())}", style=style))
        if board.upsets:
            parts.append(Text("CHANGED too: " + ", ".join(f"{u.shard} {u.before} -> {u.after}" for u in board.upsets), style="red"))
    return Group(*parts)


def _wan_panel(w: dict[str, Any]) -> Panel:
    """The spec's table of a ``--wan`` run as a rich table (the plain display prints the
    same rows as text)."""
    table = Table(box=None, padding=(0, 1))
    for col in ("row", "spec", "p50", "p99", "n", "floor", "p99/floor", "verdict"):
        table.add_column(col, overflow="fold")
    for row in w["rows"]:
        unit_s = "failover" in row["row"]

        def fmt(v: float | None, unit_s: bool = unit_s) -> str:
            return "-" if v is None else (f"{v / 1000:.2f} s" if unit_s else f"{v:.0f} ms")

        table.add_row(
            row["row"], row["spec"], fmt(row["p50_ms"]), fmt(row["p99_ms"]), str(row["n"] or "-"), fmt(row["floor_ms"]),
            "-" if row["ratio"] is None else f"{row['ratio']:.2f}x", Text(row["verdict"], style="dim"),
        )
    title = f"the spec's table on the region lab (etcd's leader in {w['etcd_leader']}, q {w['quorum_rtt_ms']:g} ms)"
    return Panel(table, title=title, border_style="blue")
