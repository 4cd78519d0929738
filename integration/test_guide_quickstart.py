"""The guide's quickstart, word by word: its commands run in order, as processes, as a
new user types them, and print what the page shows.

docs/guide/quickstart.md marks each shell block: ``quickstart: runs until Ctrl-C`` (a
process of its own, left running: `whizorch dev`, the roles), ``quickstart`` or
``quickstart: exits N`` (commands run to their end in the "second terminal", whose
``export`` and ``cd`` lines carry over); an ``output`` block after it lists lines
that output holds (a txid may differ). At the end every process gets Ctrl-C (SIGINT)
and must exit 0. The writing guide's ``run`` block then submits an order through the
same deployment.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import pathlib
import re
import shlex
import signal
import sys
from typing import Any

import pytest
from _children import Child, children

ROOT = pathlib.Path(__file__).resolve().parents[1]
WHIZORCH = pathlib.Path(sys.executable).parent / "whizorch"

_spec = importlib.util.spec_from_file_location("_docblocks", ROOT / "tests" / "_docblocks.py")
assert _spec is not None and _spec.loader is not None
docblocks = importlib.util.module_from_spec(_spec)
sys.modules["_docblocks"] = docblocks
_spec.loader.exec_module(docblocks)

pytestmark = [pytest.mark.slow]

_TXID = re.compile(r"txid \d+")


def normal(text: str) -> str:
    return _TXID.sub("txid N", text)


class Terminal:
    """The user's second terminal: its environment and working directory."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.cwd = ROOT

    async def run(self, argv: list[str]) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            str(WHIZORCH), *argv[1:], cwd=self.cwd, env=self.env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode is not None
        return proc.returncode, out.decode()


async def test_the_quickstart_runs_as_written(etcd_bin: str, tmp_path: pathlib.Path) -> None:
    """Every quickstart command runs as written, exits as the page says and prints what it shows; Ctrl-C stops every process with status 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHIZORCH_") and k != "COLUMNS"}
    env |= {"WHIZORCH_ETCD_BIN": etcd_bin, "SHOP_DB": str(tmp_path / "shop.db")}
    terminal = Terminal(env)
    endpoints = ""
    page = docblocks.GUIDE / "quickstart.md"
    found = docblocks.blocks(page)
    ran = 0
    async with children() as running:
        previous_output = ""
        for i, block in enumerate(found):
            marker = block.marker or ""
            if block.lang == "text" and marker == "output":
                for line in block.text.splitlines():
                    assert normal(line) in normal(previous_output), f"{block}: {line!r} not in\n{previous_output}"
                continue
            if block.lang != "sh" or not marker.startswith("quickstart"):
                continue
            if marker == "quickstart: runs until Ctrl-C":
                (argv,) = docblocks.commands(block.text)
                in_cwd = ["/bin/sh", "-c", 'cd "$0" && exec "$@"', str(terminal.cwd), str(WHIZORCH), *argv[1:]]
                child = await Child.start(f"{argv[1]}-{i}", in_cwd, env=terminal.env)
                running.append(child)
                if argv[1] == "dev":
                    line = await _line_starting(child, "export WHIZORCH_ETCD_ENDPOINTS=")
                    endpoints = line.split("=", 1)[1]
                else:
                    await child.next_event(f"{argv[1]}_ready", 60)
                ran += 1
                continue
            expected = int(marker.rsplit(" ", 1)[1]) if marker.startswith("quickstart: exits") else 0
            outputs = []
            for line in block.text.splitlines():
                words = shlex.split(line, comments=True)
                if not words:
                    continue
                if words[0] == "export":
                    name, _, value = words[1].partition("=")
                    terminal.env[name] = endpoints if name == "WHIZORCH_ETCD_ENDPOINTS" else value
                elif words[0] == "cd":
                    terminal.cwd = (terminal.cwd / words[1]).resolve()
                else:
                    assert words[0] == "whizorch", f"{block}: what runs {words[0]!r}?"
                    code, out = await terminal.run(words)
                    assert code == expected, f"{block}: {line}\nexited {code}, not {expected}:\n{out}"
                    outputs.append(out)
                    ran += 1
            previous_output = "\n".join(outputs)
        assert ran >= 12, f"only {ran} commands ran: are the markers right?"

        # the writing guide's example of a submission from your service, on this deployment
        (run_block,) = [b for b in docblocks.blocks(docblocks.GUIDE / "writing-sagas.md") if b.marker == "run"]
        namespace: dict[str, Any] = {"__name__": "guide_run_block"}
        exec(compile(run_block.text, str(run_block), "exec"), namespace)
        order = {"id": 7, "sku": "pen", "qty": 2, "account": "carol", "amount": 5, "country": "de"}
        outputs = await namespace["place_order"](endpoints, order)
        assert outputs["charge"] == {"charged": 5, "balance": 95} and outputs["ship"]["parcel"] == "order-7-1"

        # Ctrl-C in every terminal, the roles first
        for child in reversed(running):
            child.send(signal.SIGINT)
            assert await child.wait_exit(60) == 0, child.describe()
        dev = running[0]
        assert dev.lines[-1][1] == "etcd stopped."


async def _line_starting(child: Child, prefix: str) -> str:
    while True:
        _, line = await child.next_line(90)
        if line.startswith(prefix):
            return line
