"""The example service's own tests pass, run as its user runs them (`pytest` in
examples/shop), against this module's etcd; without asyncio's auto mode the plugin says
what to set."""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHOP = ROOT / "examples" / "shop"
PYTEST = pathlib.Path(sys.executable).parent / "pytest"
"""The console script: its sys.path does not hold the current directory, as for a user."""

pytestmark = [pytest.mark.slow]


async def run_pytest(endpoints: list[str], *args: str) -> tuple[int, str]:
    """`pytest ARGS` in examples/shop, on the external etcd ``endpoints``: exit status and output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHIZORCH_", "PYTEST_"))}
    env |= {"WHIZORCH_ETCD_BACKEND": "external", "WHIZORCH_ETCD_ENDPOINTS": ",".join(endpoints)}
    proc = await asyncio.create_subprocess_exec(
        str(PYTEST), "-q", "-p", "no:cacheprovider", *args, cwd=SHOP, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_the_shop_tests_pass(etcd_endpoints: list[str]) -> None:
    """examples/shop's tests (a completed order across two regions, a retried transient failure, a compensation, a fenced stale run) pass."""
    code, out = await run_pytest(etcd_endpoints)
    assert code == 0, out
    assert "4 passed" in out, out


async def test_without_auto_mode_the_plugin_names_the_setting(etcd_endpoints: list[str]) -> None:
    """In pytest-asyncio's strict mode each async test that uses the fixtures fails at setup with the setting to change."""
    code, out = await run_pytest(etcd_endpoints, "-o", "asyncio_mode=strict")
    assert code == 1, out
    assert "1 passed, 3 errors" in out, out
    assert (
        "test_an_order_completes_across_two_regions is `async def`, and pytest-asyncio runs only marked tests in "
        "'strict' mode: set asyncio_mode = \"auto\" under [tool.pytest.ini_options]"
    ) in out
    assert "not natively supported" not in out
