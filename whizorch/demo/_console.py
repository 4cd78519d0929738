"""``whizorch demo --console``: the web console beside the demo, as a process of its own.

The console runs as ``whizorch console`` (so its pages cost the demo's processes
nothing) on the demo's etcd and namespace, and its URL is printed. On the region lab
(``--wan``) it runs on the host and reads the members through the lab's own undelayed
endpoints, so a browser on the host reaches it in either lab mode.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from whizorch.errors import ConfigError
from whizorch.testing import dying_with_parent

__all__ = ["ConsoleProcess"]

READY_S = 60.0
URL = re.compile(r"whizorch console: (http://\S+/)")


class ConsoleProcess:
    """A ``whizorch console`` child: started, its URL read from its first lines, stopped."""

    def __init__(self, endpoints: str, namespace: str, bind: str, log_dir: Path) -> None:
        self.argv = [
            sys.executable, "-m", "whizorch", "console", "--etcd", endpoints, "--namespace", namespace, "--bind", bind,
        ]  # fmt: skip
        self.log_path = log_dir / "console.log"
        self.proc: subprocess.Popen[str] | None = None
        self.url: str | None = None

    def start(self) -> str:
        """Start it and return its URL (a ConfigError naming its log if it does not serve)."""
        from whizorch.cli._console_cmd import MISSING, console_installed

        if not console_installed():
            raise ConfigError(MISSING, field="console")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                dying_with_parent(self.argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + READY_S
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            found = URL.search(line)
            if found:
                self.url = found.group(1)
                return self.url
        self.stop()
        raise ConfigError(f"the console did not start (its log: {self.log_path})", field="console")

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after 3 s); idempotent."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(3.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
