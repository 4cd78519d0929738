"""The primitives demo (`python -m whizorch.demo.primitives`) runs end to end on etcd it starts itself."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.etcd34
@pytest.mark.timeout(180)
def test_demo_runs_end_to_end_and_shows_takeover_fencing_and_the_exact_counter(etcd_bin: str) -> None:
    """The demo exits 0 and shows: a takeover after the pause, the late write fenced, the counter exact."""
    env = dict(os.environ, WHIZORCH_ETCD_BIN=str(etcd_bin))
    proc = subprocess.run(
        [sys.executable, "-m", "whizorch.demo.primitives", "--ttl", "2"],
        capture_output=True, text=True, timeout=170, env=env, check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"demo failed:\n{out}\n{proc.stderr[-3000:]}"
    assert "3 members up" in out
    assert "global IDs (etcd revisions)" in out
    assert "candidate-2 leads after" in out
    assert "its late write with the old fence: FencedError" in out
    assert "counter = 100" in out
    assert "still committing with 2 of 3 members" in out
    assert "all members stopped, data dirs removed" in out
