"""Child processes that die with their parent, free loopback ports, log tails.

On Linux every etcd member is started with ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (by
util-linux's ``setpriv --pdeathsig`` where it exists, else a small exec wrapper) so a
test runner killed with SIGKILL takes its etcd members with it. The kernel sends that
signal when the *thread* that forked the child exits, not the process, so all spawns
go through one long-lived thread: a member started from a short-lived thread (such as
an ``asyncio.to_thread`` worker) would otherwise be killed when that thread ends.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["dying_with_parent", "free_ports", "log_tail", "spawn"]

_PR_SET_PDEATHSIG = 1
_IS_LINUX = sys.platform.startswith("linux")

_spawner: concurrent.futures.ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()

# ports this process handed out already: a port is never given to two members even
# if the first member has not bound it yet
_handed_out: set[int] = set()
_ports_lock = threading.Lock()


# Sets PR_SET_PDEATHSIG, then execs the command (the setting survives exec), where
# util-linux's setpriv is missing: no Python code of this process (full of gRPC
# threads) runs between fork and exec, as it would in a preexec_fn.
_PDEATHSIG_EXEC = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
if os.getppid() != int(sys.argv[1]):
    os._exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def dying_with_parent(argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped so that, on Linux, the child gets SIGKILL when this process dies.

    Through ``setpriv --pdeathsig KILL`` where it exists, else a tiny Python exec
    wrapper; elsewhere ``argv`` unchanged. (The kernel sends the signal when the
    *thread* that started the child ends: start long-lived children from a thread that
    lives as long as they should, as `spawn` does.)
    """
    if not _IS_LINUX:
        return list(argv)
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        return [setpriv, "--pdeathsig", "KILL", "--", *argv]
    return [sys.executable, "-I", "-S", "-c", _PDEATHSIG_EXEC, str(os.getpid()), *argv]


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="whizorch-etcd-spawner"
            )
        return _spawner


def spawn(
    args: Sequence[str], *, log_path: Path, env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """Start ``args`` with stdout and stderr appended to ``log_path``.

    On Linux the child gets SIGKILL when this process dies.
    """

    def run() -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log:
            # a session of its own: a Ctrl-C at the terminal reaches this process, which
            # stops its members in order, not every member at once
            return subprocess.Popen(
                dying_with_parent(args),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                close_fds=True,
                start_new_session=True,
            )

    if not _IS_LINUX:
        return run()
    return _executor().submit(run).result()


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports free on 127.0.0.1 right now.

    The ports are found by binding port 0; all sockets stay open until every port is
    chosen so none repeats. Another process may still take one before etcd binds it:
    the caller retries on "address already in use".
    """
    chosen: list[int] = []
    sockets: list[socket.socket] = []
    try:
        with _ports_lock:
            for _ in range(count * 20):
                if len(chosen) == count:
                    break
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
                if port not in _handed_out:
                    chosen.append(port)
            if len(chosen) < count:
                raise OSError(f"could not find {count} free ports on 127.0.0.1")
            _handed_out.update(chosen)
    finally:
        for sock in sockets:
            sock.close()
    return chosen


def log_tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a log file (empty when it does not exist)."""
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            # 400 bytes a line is generous for etcd's JSON log lines
            log.seek(max(0, size - lines * 400))
            data = log.read()
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", errors="replace")
    return list(deque(text.splitlines(), maxlen=lines))
