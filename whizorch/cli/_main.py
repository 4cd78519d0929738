"""The click command group and the role commands."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import click

from whizorch.errors import ConfigError
from whizorch.etcd import EtcdClient, EtcdConfig
from whizorch.saga import App, Orchestrator, Router, Saga, Worker

ENDPOINTS_HELP = "etcd endpoints, comma-separated (env WHIZORCH_ETCD_ENDPOINTS)"


def load_app(spec: str) -> App:
    """Import ``module:object``; the object is an App, a Saga, a list of Sagas, or a
    callable returning one of those."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError("--app must look like module:object", field="app", value=spec)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}", field="app", value=spec) from exc
    try:
        obj: Any = getattr(module, attr)
    except AttributeError as exc:
        raise ConfigError(f"{module_name!r} has no attribute {attr!r}", field="app", value=spec) from exc
    if callable(obj) and not isinstance(obj, (App, Saga)):
        obj = obj()
    if isinstance(obj, App):
        return obj
    if isinstance(obj, Saga):
        return App([obj])
    if isinstance(obj, (list, tuple)) and all(isinstance(s, Saga) for s in obj):
        return App(obj)
    raise ConfigError("--app must name an App, a Saga or a list of Sagas", field="app", value=spec)


def run_until_signalled(body: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``body(stop)`` until SIGINT/SIGTERM sets ``stop``."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await body(stop)

    asyncio.run(runner())


def emit(kind: str, fields: dict[str, Any]) -> None:
    """One JSON line on stdout (``--events``)."""
    sys.stdout.write(json.dumps({"event": kind, **fields}, default=str) + "\n")
    sys.stdout.flush()


@click.group()
@click.option("-v", "--verbose", count=True, help="more logging (-vv: debug)")
def main(verbose: int) -> None:
    """whizorch: multi-region sagas, consensus delegated to etcd."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def dev(args: tuple[str, ...]) -> None:
    """Run a local etcd cluster in the foreground (see --help of python -m whizorch.dev)."""
    from whizorch.dev import main as dev_main

    sys.exit(dev_main(list(args)))


@main.command()
@click.option("--etcd", "endpoints", envvar="WHIZORCH_ETCD_ENDPOINTS", required=True, help=ENDPOINTS_HELP)
@click.option("--app", "app_spec", required=True, help="module:object naming your App / Saga(s)")
@click.option("--region", required=True, help="the region this worker serves")
@click.option("--namespace", default="whizorch", show_default=True)
@click.option("--id", "worker_id", default=None, help="worker id (default host-pid-region)")
@click.option("--concurrency", default=16, show_default=True, type=int)
@click.option("--compliance", default="", help="compliance tags, comma-separated")
@click.option("--cost", default=0.0, show_default=True, type=float)
@click.option("--lease-ttl", default=5, show_default=True, type=int, help="liveness lease TTL (s)")
def worker(
    endpoints: str, app_spec: str, region: str, namespace: str, worker_id: str | None, concurrency: int,
    compliance: str, cost: float, lease_ttl: int,
) -> None:
    """Run a regional worker until SIGINT/SIGTERM (then drain)."""
    app = load_app(app_spec)
    tags = [t for t in compliance.split(",") if t]

    async def body(stop: asyncio.Event) -> None:
        async with EtcdClient(EtcdConfig(endpoints=endpoints)) as client:
            w = Worker(
                client, app, region=region, namespace=namespace, worker_id=worker_id, concurrency=concurrency,
                compliance=tags, cost=cost, lease_ttl_s=lease_ttl,
            )
            async with w:
                emit("worker_ready", {"region": region, "worker": w.worker_id})
                await stop.wait()
            emit("worker_stopped", {"region": region, "completed": w.completed})

    run_until_signalled(body)


@main.command()
@click.option("--etcd", "endpoints", envvar="WHIZORCH_ETCD_ENDPOINTS", required=True, help=ENDPOINTS_HELP)
@click.option("--app", "app_spec", required=True, help="module:object naming your App / Saga(s)")
@click.option("--namespace", default="whizorch", show_default=True)
@click.option("--id", "node_id", default=None, help="node id (default host-pid)")
@click.option("--lease-ttl", default=5, show_default=True, type=int, help="leader lease TTL (s)")
@click.option("--retention", default=3600.0, show_default=True, type=float, help="keep finished sagas (s)")
@click.option("--latency", "latency_file", default=None, type=click.Path(exists=True), help="JSON {src: {dst: ms}}")
@click.option("--home-region", default=None)
@click.option("--failover-policy", type=click.Choice(["closest", "score"]), default="closest", show_default=True)
@click.option("--events/--no-events", default=False, help="print leader/failover events as JSON lines")
def orchestrator(
    endpoints: str, app_spec: str, namespace: str, node_id: str | None, lease_ttl: int, retention: float,
    latency_file: str | None, home_region: str | None, failover_policy: str, events: bool,
) -> None:
    """Run an orchestrator candidate until SIGINT/SIGTERM."""
    app = load_app(app_spec)
    latency = None
    if latency_file:
        with open(latency_file) as fh:
            latency = json.load(fh)
    router = Router(latency_ms=latency, home_region=home_region, failover_policy=failover_policy)

    async def body(stop: asyncio.Event) -> None:
        async with EtcdClient(EtcdConfig(endpoints=endpoints)) as client:
            orch = Orchestrator(
                client, app, namespace=namespace, node_id=node_id, router=router, lease_ttl_s=lease_ttl,
                retention_s=retention, on_event=emit if events else None,
            )
            async with orch:
                emit("orchestrator_ready", {"node": orch.node_id})
                await stop.wait()

    run_until_signalled(body)
