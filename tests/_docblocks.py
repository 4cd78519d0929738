"""The fenced blocks of the docs, with the marker comment on the line above each.

Markers (an HTML comment right above the fence) say how a block is tested:

``<!-- file: PATH -->``          the block is a verbatim excerpt of PATH (whose tests run it)
``<!-- run -->``                 a Python block executed as is
``<!-- output -->``              lines the commands of the quickstart block above print
``<!-- quickstart[: ...] -->``   commands the quickstart test runs (``runs until Ctrl-C``,
                                 ``exits N``)
``<!-- guide: commands -->``     commands checked against the CLI only
"""

from __future__ import annotations

import pathlib
import re
import shlex

import attrs

ROOT = pathlib.Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guide"

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
_MARKER = re.compile(r"<!--\s*(.*?)\s*-->\s*$")


@attrs.frozen
class Block:
    """One fenced block of a page."""

    page: pathlib.Path
    line: int
    lang: str
    text: str
    marker: str | None

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line} ({self.lang}, {self.marker or 'no marker'})"

    @property
    def file(self) -> pathlib.Path | None:
        """The file a ``file:`` block is an excerpt of."""
        if self.marker is None or not self.marker.startswith("file:"):
            return None
        return ROOT / self.marker.removeprefix("file:").strip()


def blocks(page: pathlib.Path) -> list[Block]:
    """Every fenced block of ``page``, in order."""
    text = page.read_text()
    out = []
    for m in _FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        above = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = _MARKER.match(above.strip())
        out.append(Block(page, line, m.group(1), m.group(2), marker.group(1) if marker else None))
    return out


def guide_pages() -> list[pathlib.Path]:
    return sorted(GUIDE.glob("*.md"))


def commands(text: str) -> list[list[str]]:
    """The ``whizorch ...`` command lines of a shell block, split as the shell would
    (comments dropped)."""
    out = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "whizorch":
            out.append(words)
    return out
