"""Child processes that die with their parent, free loopback ports, log tails.

On Linux every etcd member is started with ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (by
util-linux's ``setpriv --pdeathsig`` where it exists, else in a ``preexec_fn``) so a
test runner killed with SIGKILL takes its etcd members with it. The kernel sends that
signal when the *thread* that forked the child exits, not the process, so all spawns
go through one long-lived thread: a member started from a short-lived thread (such as
an ``asyncio.to_thread`` worker) would otherwise be killed when that thread ends.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["free_ports", "log_tail", "spawn"]

_PR_SET_PDEATHSIG = 1
_IS_LINUX = sys.platform.startswith("linux")

_spawner: concurrent.futures.ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()

# ports this process handed out already: a port is never given to two members even
# if the first member has not bound it yet
_handed_out: set[int] = set()
_ports_lock = threading.Lock()


@functools.cache
def _prctl() -> Callable[..., int] | None:
    # resolved in the parent: loading a library in a forked child of a threaded
    # process can deadlock
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return prctl


def _die_with_parent_preexec() -> Callable[[], None] | None:
    if not _IS_LINUX:
        return None
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        # the parent may have died between fork and prctl: then nobody would kill us
        if os.getppid() != parent:
            os._exit(1)

    return preexec


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

    setpriv = shutil.which("setpriv") if _IS_LINUX else None

    def run() -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log:
            if setpriv is not None:
                # util-linux's setpriv sets the death signal and execs etcd: no Python
                # code runs between fork and exec, so subprocess can use vfork and
                # gRPC's fork handlers never run in a child of this threaded process
                # (a preexec_fn forks, and gRPC may then abort the child)
                return subprocess.Popen(
                    [setpriv, "--pdeathsig", "KILL", "--", *args],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(env),
                    close_fds=True,
                )
            return subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                close_fds=True,
                preexec_fn=_die_with_parent_preexec(),
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
