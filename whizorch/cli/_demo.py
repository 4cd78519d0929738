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
              help="length of the saga stream (s); the region dies at 1/3, an orchestrator at 2/3")
@click.option("--ttl", default=2, show_default=True, type=click.IntRange(min=1),
              help="lease TTL of workers and orchestrators (s)")
@click.option("--shards", default=8, show_default=True, type=click.IntRange(min=1, max=64),
              help="shards of the demo's namespace, shared by its 3 orchestrators")
@click.option("--rate", default=10.0, show_default=True, type=click.FloatRange(min=0.1, max=200.0),
              help="sagas submitted per second")
@click.option("--max-in-flight", default=50, show_default=True, type=click.IntRange(min=1),
              help="submitted sagas not yet finished, at most")
@click.option("--seed", default=1, show_default=True, type=int, help="seed of the saga inputs")
@click.option("--plain", is_flag=True, help="plain line-per-event output even on a terminal (the default when stdout is not one)")
@click.option("--json-summary", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="also write the summary to this file as JSON")
@click.option("--primitives", is_flag=True, help="run the consensus-primitives demo instead of the saga demo")
@click.option("--wan", is_flag=True,
              help="regions apart: a region lab (round trips eu-us 80, us-ap 150, eu-ap 200 ms), each process in its "
                   "region; as root network namespaces, else the lab's approximation")
@click.option("--console", "console", is_flag=False, flag_value="127.0.0.1:8470", default=None, metavar="[HOST:PORT]",
              help="serve the web console beside the demo (default 127.0.0.1:8470) and print its URL; "
                   "needs pip install 'whizorch[console]'")
@click.option("--demo-namespace", default=None, hidden=True, help="(internal) the namespace the --wan run picked")
@click.option("--wan-lab", default=None, hidden=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="(internal) the placement a --wan run hands to the demo it places in the lab")
def demo(
    endpoints: str | None, duration: float, ttl: int, shards: int, rate: float, max_in_flight: int, seed: int, plain: bool,
    json_summary: Path | None, primitives: bool, wan: bool, wan_lab: Path | None, console: str | None,
    demo_namespace: str | None,
) -> None:
    """Sagas across 3 regions with a region and an orchestrator killed mid-run.

    With no --etcd it starts a local 3-member etcd cluster; then workers in eu, us
    and ap and three orchestrators sharing the namespace's --shards, each its own
    process. It runs a stream of sagas (some designed to fail and compensate),
    SIGKILLs region us's workers at 1/3 of --duration and at 2/3 the orchestrator
    leading the most shards, shows live progress and which shards moved, and ends with
    a summary: sagas by outcome, latency p50/p99, the measured failover times (each of
    the killed orchestrator's shards led again by whom, after how long). Exit status 0
    when the region's steps failed over, every shard of the killed orchestrator was
    led again and no other shard changed leader, and every saga reached its designed
    outcome.

    With --wan the same demo runs on a region lab: one etcd member per region, every
    byte between regions delayed, each role placed in its region; the summary adds the
    spec's performance table from the run, next to the floors of the round-trip matrix.

    With --console the web console serves the run live (its URL is printed first).
    """
    if wan and (endpoints or primitives):
        raise click.UsageError("--wan runs the saga demo on a region lab it starts: it takes neither --etcd nor --primitives")
    if primitives:
        from whizorch.demo.primitives import main as primitives_main

        sys.exit(primitives_main(["--ttl", str(ttl)]))
    from whizorch.demo._saga_demo import DemoOptions, run

    options = DemoOptions(
        etcd=endpoints, duration_s=duration, ttl_s=ttl, shards=shards, rate=rate, max_in_flight=max_in_flight, seed=seed,
        plain=plain, json_summary=json_summary, wan=wan or wan_lab is not None, wan_lab=wan_lab,
        console=console, namespace=demo_namespace,
    )
    sys.exit(run(options))
