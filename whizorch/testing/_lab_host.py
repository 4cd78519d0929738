"""What the region lab does to the host: network namespaces, and the network process.

Namespaces are made with ``ip netns`` (root only) and named ``wz-<pid>-<n>-<region>``;
removing one first kills what still runs inside it. The lab's network process
(``_lab_net``) is started from the long-lived spawner thread with ``PR_SET_PDEATHSIG``
so it dies with the process that started it, and answers JSON-lines requests.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import IO, Any

from whizorch.testing._lab_model import (
    directory_owner,
    directory_prefix,
    namespace_owner,
    stale_namespaces,
)
from whizorch.testing._member import LocalClusterError
from whizorch.testing._process import _executor, dying_with_parent, log_tail

__all__ = [
    "NetProcess",
    "add_namespace",
    "list_namespaces",
    "make_lab_directory",
    "netns_unavailable_reason",
    "remove_namespace",
    "remove_stale_directories",
    "remove_stale_namespaces",
    "start_child",
    "stop_process",
]

_IS_LINUX = sys.platform.startswith("linux")
_IP_TIMEOUT_S = 15.0
_STOP_GRACE_S = 5.0
_REQUEST_TIMEOUT_S = 10.0
_START_TIMEOUT_S = 30.0  # the first answer waits for the interpreter to start


def netns_unavailable_reason() -> str | None:
    """Why this process cannot give the region lab network namespaces (``None``: it can)."""
    if not _IS_LINUX:
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return f"network namespaces need root (`ip netns add`); running as uid {os.geteuid()}"
    if shutil.which("ip") is None:
        return "network namespaces need the `ip` command (iproute2), which is not on PATH"
    try:
        done = _ip("netns", "list", check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns list` could not run: {exc}"
    if done.returncode != 0:
        return f"`ip netns list` failed: {done.stderr.strip()}"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["ip", *args],
        capture_output=True,
        text=True,
        timeout=_IP_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and done.returncode != 0:
        raise LocalClusterError(
            f"`ip {' '.join(args)}` failed with status {done.returncode}: "
            f"{done.stderr.strip() or done.stdout.strip()}",
            returncode=done.returncode,
        )
    return done


def list_namespaces() -> list[str]:
    """The names of the host's named network namespaces."""
    done = _ip("netns", "list", check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def add_namespace(name: str, addresses: Collection[str]) -> None:
    """Make namespace ``name`` with its loopback up and ``addresses`` (127.x) on it."""
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        for address in addresses:
            _ip("-n", name, "addr", "add", f"{address}/32", "dev", "lo")
    except BaseException:
        _ip("netns", "delete", name, check=False)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_namespace(name: str) -> None:
    """Kill what still runs inside namespace ``name``, then delete it."""
    if namespace_owner(name) is None:
        raise LocalClusterError(f"{name!r} is not a namespace the region lab makes")
    done = _ip("netns", "pids", name, check=False)
    pids = [int(p) for p in done.stdout.split() if p.isdigit() and int(p) != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    _ip("netns", "delete", name, check=False)


def remove_stale_namespaces(in_use: Collection[str] = ()) -> list[str]:
    """Remove the lab namespaces whose process is gone (killed before it could close
    its lab), and those named for this process that none of its open labs uses (left
    by an earlier process with the same pid); return their names."""
    me = os.getpid()
    stale = stale_namespaces(
        list_namespaces(), lambda pid: pid != me and _alive(pid), in_use=in_use
    )
    for name in stale:
        remove_namespace(name)
    return stale


def make_lab_directory() -> Path:
    """A new temporary directory for a lab of this process (its pid in the name)."""
    return Path(tempfile.mkdtemp(prefix=directory_prefix(os.getpid())))


def remove_stale_directories() -> list[Path]:
    """Delete the temporary directories of labs whose process is gone."""
    stale = []
    for path in Path(tempfile.gettempdir()).glob("whizorch-lab-*"):
        owner = directory_owner(path.name)
        if owner is not None and owner != os.getpid() and not _alive(owner) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            stale.append(path)
    return stale


def start_child(argv: list[str], **options: Any) -> subprocess.Popen[Any]:
    """`subprocess.Popen` of ``argv`` that gets SIGKILL when this process dies (Linux).

    Started from the long-lived spawner thread: the kernel sends the signal when the
    thread that forked the child ends, not only the process.
    """

    def run() -> subprocess.Popen[Any]:
        return subprocess.Popen(dying_with_parent(argv), **options)

    return _executor().submit(run).result() if _IS_LINUX else run()


def stop_process(process: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after a grace period; reaped either way."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class NetProcess:
    """The lab's network process (``_lab_net``) and its JSON-lines requests."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._lock = threading.Lock()
        self._answered = False
        with open(log_path, "ab") as log:
            self.process: subprocess.Popen[bytes] = start_child(
                [sys.executable, "-m", "whizorch.testing._lab_net"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                close_fds=True,
                start_new_session=True,  # a Ctrl-C reaches the lab, which closes it
            )

    def _fail(self, what: str) -> LocalClusterError:
        tail = "\n".join("    " + line for line in log_tail(self.log_path, 20)) or "    (empty)"
        return LocalClusterError(
            f"the region lab's network process {what}; last lines of {self.log_path}:\n{tail}",
            returncode=self.process.poll(),
        )

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request and return the answer; `LocalClusterError` on failure."""
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        with self._lock:
            try:
                stdin.write((json.dumps({"op": op, **fields}) + "\n").encode())
                stdin.flush()
            except (BrokenPipeError, ValueError):
                raise self._fail("has exited") from None
            timeout = _REQUEST_TIMEOUT_S if self._answered else _START_TIMEOUT_S
            line = self._readline(stdout, timeout)
            self._answered = True
        if not line:
            raise self._fail("has exited")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise self._fail(f"refused {op!r}: {answer['error']}")
        return answer

    def _readline(self, stdout: IO[bytes], timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        line = b""
        fd = stdout.fileno()
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._fail(f"did not answer within {timeout:g}s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return b""
                line += chunk
        return line

    @property
    def is_running(self) -> bool:
        """Whether the process has not exited."""
        return self.process.poll() is None

    def close(self) -> None:
        """Close its input (it exits), then kill it if it lingers."""
        with contextlib.suppress(OSError, ValueError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
