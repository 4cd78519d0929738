"""``whizorch demo``: the main job (the saga demo on a local etcd cluster it starts)."""

from __future__ import annotations

import sys

import click

from whizorch.cli._main import main


@main.command()
@click.option("--primitives", is_flag=True, help="run the consensus-primitives demo instead of the saga demo")
@click.option("--ttl", default=2, show_default=True, type=int, help="leader lease TTL (s)")
def demo(primitives: bool, ttl: int) -> None:
    """The saga demo on a local etcd cluster it starts itself."""
    from whizorch.demo.primitives import main as primitives_main

    sys.exit(primitives_main(["--ttl", str(ttl)]))
