"""The example service's own tests pass, run as its user runs them (`pytest` in
examples/shop), against this module's etcd; without asyncio's auto mode the plugin says
what to set."""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import subprocess
import sys
import zipfile

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


def test_the_install_pages_wheel_builds(tmp_path: pathlib.Path) -> None:
    """`pip wheel --no-deps -w dist .` builds the wheel the install page names, with the command and the pytest plugin."""
    install = (ROOT / "docs" / "guide" / "install.md").read_text()
    (named,) = set(re.findall(r"whizorch-[\w.]+-py3-none-any\.whl", install))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert [p.name for p in tmp_path.glob("*.whl")] == [named]
    with zipfile.ZipFile(tmp_path / named) as wheel:
        names = wheel.namelist()
        text = wheel.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "whizorch/py.typed" in names and "whizorch/cli/_run.py" in names
    assert "whizorch = whizorch.cli:main" in text and "whizorch = whizorch.testing.pytest_plugin" in text
