"""``whizorch demo``: the main job (the saga demo on a local etcd cluster it starts)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from whizorch.cli._main import main


@main.command()
@click.option("--etcd", "endpoints", default=None, metavar="ENDPOINTS",
              help="use this etcd cluster (comma-separated endpoints) instead of starting a local one")
@click.option("--duration", default=30.0, show_default=True, type=click.FloatRange(min=6.0),
              help="length of the saga stream (s); the region dies at 1/3, the leader at 2/3")
@click.option("--ttl", default=2, show_default=True, type=click.IntRange(min=1),
              help="lease TTL of workers and orchestrators (s)")
@click.option("--rate", default=10.0, show_default=True, type=click.FloatRange(min=0.1, max=200.0),
              help="sagas submitted per second")
@click.option("--max-in-flight", default=50, show_default=True, type=click.IntRange(min=1),
              help="submitted sagas not yet finished, at most")
@click.option("--seed", default=1, show_default=True, type=int, help="seed of the saga inputs")
@click.option("--plain", is_flag=True, help="plain line-per-event output even on a terminal (the default when stdout is not one)")
@click.option("--json-summary", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="also write the summary to this file as JSON")
@click.option("--primitives", is_flag=True, help="run the consensus-primitives demo instead of the saga demo")
def demo(
    endpoints: str | None, duration: float, ttl: int, rate: float, max_in_flight: int, seed: int, plain: bool,
    json_summary: Path | None, primitives: bool,
) -> None:
    """Sagas across 3 regions with a region and the leader killed mid-run.

    With no --etcd it starts a local 3-member etcd cluster; then workers in eu, us
    and ap and two orchestrator candidates, each its own process. It runs a stream of
    sagas (some designed to fail and compensate), SIGKILLs region us's workers at 1/3
    of --duration and the leader at 2/3, shows live progress, and ends with a summary:
    sagas by outcome, latency p50/p99, the measured failover times. Exit status 0 when
    both failovers happened and every saga reached its designed outcome.
    """
    if primitives:
        from whizorch.demo.primitives import main as primitives_main

        sys.exit(primitives_main(["--ttl", str(ttl)]))
    from whizorch.demo._saga_demo import DemoOptions, run

    options = DemoOptions(
        etcd=endpoints, duration_s=duration, ttl_s=ttl, rate=rate, max_in_flight=max_in_flight, seed=seed,
        plain=plain, json_summary=json_summary,
    )
    sys.exit(run(options))
