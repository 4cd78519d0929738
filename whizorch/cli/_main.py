"""The click command group and the role commands."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import attrs
import click

from whizorch.config import WhizorchConfig, load_config
from whizorch.coord import LeaseTiming
from whizorch.errors import ConfigError, WhizorchError
from whizorch.etcd import EtcdClient
from whizorch.observe import Metrics, MetricsServer, Tracing, serve_metrics
from whizorch.saga import App, Orchestrator, OrchestratorEvent, Router, Saga, Worker

ENDPOINTS_HELP = "etcd endpoints, comma-separated (default: the config's, env WHIZORCH_ETCD_ENDPOINTS)"
CONFIG_HELP = "a whizorch TOML file (env WHIZORCH_CONFIG); see docs/configuration.md"


def import_object(spec: str, *, field: str) -> Any:
    """Import ``module:object``, naming ``field`` in the error."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--{field} must look like module:object", field=field, value=spec)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}", field=field, value=spec) from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise ConfigError(f"{module_name!r} has no attribute {attr!r}", field=field, value=spec) from exc


def load_app(spec: str) -> App:
    """Import ``module:object``; the object is an App, a Saga, a list of Sagas, or a
    callable returning one of those."""
    obj: Any = import_object(spec, field="app")
    if callable(obj) and not isinstance(obj, (App, Saga)):
        obj = obj()
    if isinstance(obj, App):
        return obj
    if isinstance(obj, Saga):
        return App([obj])
    if isinstance(obj, (list, tuple)) and all(isinstance(s, Saga) for s in obj):
        return App(obj)
    raise ConfigError("--app must name an App, a Saga or a list of Sagas", field="app", value=spec)


def load_settings(config_path: str | None, *, endpoints: str | None = None, namespace: str | None = None) -> WhizorchConfig:
    """The configuration: defaults < TOML file < WHIZORCH_* env < command-line flags."""
    cfg = load_config(config_path)
    if endpoints:
        cfg = attrs.evolve(cfg, etcd=attrs.evolve(cfg.etcd, endpoints=tuple(e.strip() for e in endpoints.split(","))))
    if namespace:
        cfg = attrs.evolve(cfg, namespace=namespace)
    return cfg


def role_timing(cfg: WhizorchConfig, lease_ttl: int | None) -> LeaseTiming:
    """A role's lease timing: ``--lease-ttl`` (with default keepalive and margin), else
    ``[consensus]``'s, checked when the config was read."""
    return cfg.consensus.lease if lease_ttl is None else LeaseTiming.of(lease_ttl)


class Observability:
    """The middleware and the /metrics endpoint a role runs with."""

    def __init__(self, cfg: WhizorchConfig, *, metrics_bind: str | None, tracing: bool | None, middleware: tuple[str, ...]) -> None:
        self.middleware: list[Any] = []
        self.server: MetricsServer | None = None
        self._bind = metrics_bind or (cfg.monitoring.metrics_bind if cfg.monitoring.metrics else None)
        if cfg.monitoring.tracing if tracing is None else tracing:
            self.middleware.append(Tracing())
        if self._bind:
            self.middleware.append(Metrics())
        for spec in middleware:
            mw = import_object(spec, field="middleware")
            if isinstance(mw, type):
                mw = mw()
            self.middleware.append(mw)

    def __enter__(self) -> Observability:
        if self._bind:
            self.server = serve_metrics(self._bind)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.close()

    def fields(self) -> dict[str, Any]:
        """What to report in the ready event."""
        return {"metrics": self.server.url} if self.server is not None else {}


def observability_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--metrics-bind, --tracing, --middleware (shared by the roles)."""
    fn = click.option(
        "--middleware", multiple=True, help="module:object of a middleware (or a class to instantiate); repeatable"
    )(fn)
    fn = click.option(
        "--tracing/--no-tracing", default=None, help="OpenTelemetry spans (default: [monitoring] tracing)"
    )(fn)
    fn = click.option(
        "--metrics-bind", default=None, metavar="HOST:PORT",
        help="serve Prometheus /metrics here (default: [monitoring] metrics_bind when metrics = true)",
    )(fn)
    return fn


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Bad configuration and etcd trouble end the command with one clear line (exit 2)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"whizorch: configuration error: {exc}", err=True)
            sys.exit(2)
        except WhizorchError as exc:
            click.echo(f"whizorch: {type(exc).__name__}: {exc}", err=True)
            sys.exit(2)

    return wrapper


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


async def serve_role(stop: asyncio.Event, role: Worker | Orchestrator) -> None:
    """Wait for SIGINT/SIGTERM; a role that stops by itself (only a fatal error does)
    ends the command with that error, so a process never runs on doing nothing."""
    stopped = asyncio.ensure_future(stop.wait())
    joined = asyncio.ensure_future(role.join())
    try:
        await asyncio.wait({stopped, joined}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for fut in (stopped, joined):
            if not fut.done():
                fut.cancel()
        await asyncio.gather(stopped, joined, return_exceptions=True)
    if joined.done() and not joined.cancelled():
        joined.result()  # raises what stopped the role
        raise RuntimeError("the role stopped without an error")  # join() only returns on close


def emit(kind: str, fields: dict[str, Any]) -> None:
    """One JSON line on stdout (``--events``)."""
    sys.stdout.write(json.dumps({"event": kind, **fields}, default=str) + "\n")
    sys.stdout.flush()


def emit_event(event: OrchestratorEvent) -> None:
    """An orchestrator's event as one JSON line (``--events``)."""
    emit(event.kind, event.fields())


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


@main.command(context_settings={"ignore_unknown_options": True}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def lab(args: tuple[str, ...]) -> None:
    """Run a region lab in the foreground: etcd members in regions apart (whizorch lab --help)."""
    from whizorch.lab import main as lab_main

    sys.exit(lab_main(list(args)))


@main.command()
@click.option("--config", "config_path", envvar="WHIZORCH_CONFIG", default=None, help=CONFIG_HELP)
@click.option("--etcd", "endpoints", default=None, help=ENDPOINTS_HELP)
@click.option("--app", "app_spec", required=True, help="module:object naming your App / Saga(s)")
@click.option("--region", required=True, help="the region this worker serves")
@click.option("--namespace", default=None, help="key namespace (default: the config's, 'whizorch')")
@click.option("--id", "worker_id", default=None, help="worker id (default host-pid-region)")
@click.option("--concurrency", default=16, show_default=True, type=int)
@click.option("--compliance", default=None, help="compliance tags, comma-separated (default: the region's in the config)")
@click.option("--cost", default=None, type=float, help="relative cost (default: the region's in the config, 0)")
@click.option("--lease-ttl", default=None, type=int, help="liveness lease TTL in s (default: [consensus] lease_ttl_s, 5)")
@observability_options
@friendly_errors
def worker(
    config_path: str | None, endpoints: str | None, app_spec: str, region: str, namespace: str | None,
    worker_id: str | None, concurrency: int, compliance: str | None, cost: float | None, lease_ttl: int | None,
    metrics_bind: str | None, tracing: bool | None, middleware: tuple[str, ...],
) -> None:
    """Run a regional worker until SIGINT/SIGTERM (then drain)."""
    cfg = load_settings(config_path, endpoints=endpoints, namespace=namespace)
    app = load_app(app_spec)
    home = cfg.region(region)
    tags = [t for t in compliance.split(",") if t] if compliance is not None else list(home.compliance if home else ())
    timing = role_timing(cfg, lease_ttl)
    etcd = cfg.etcd_config(region if home is not None else None)
    obs = Observability(cfg, metrics_bind=metrics_bind, tracing=tracing, middleware=middleware)

    async def body(stop: asyncio.Event) -> None:
        async with EtcdClient(etcd) as client:
            w = Worker(
                client, app, region=region, namespace=cfg.namespace, worker_id=worker_id, concurrency=concurrency,
                compliance=tags, cost=cost if cost is not None else (home.cost if home else 0.0),
                middleware=obs.middleware, lease=timing,
            )
            async with w:
                emit("worker_ready", {"region": region, "worker": w.worker_id, **obs.fields()})
                await serve_role(stop, w)
            emit("worker_stopped", {"region": region, "completed": w.completed})

    with obs:
        run_until_signalled(body)


@main.command()
@click.option("--config", "config_path", envvar="WHIZORCH_CONFIG", default=None, help=CONFIG_HELP)
@click.option("--etcd", "endpoints", default=None, help=ENDPOINTS_HELP)
@click.option("--app", "app_spec", required=True, help="module:object naming your App / Saga(s)")
@click.option("--namespace", default=None, help="key namespace (default: the config's, 'whizorch')")
@click.option("--id", "node_id", default=None, help="node id (default host-pid)")
@click.option("--lease-ttl", default=None, type=int, help="leader lease TTL in s (default: [consensus] lease_ttl_s, 5)")
@click.option("--retention", default=3600.0, show_default=True, type=float, help="keep finished sagas (s)")
@click.option("--latency", "latency_file", default=None, type=click.Path(exists=True), help="JSON {src: {dst: ms}} (default: the config's regions)")
@click.option("--home-region", default=None)
@click.option("--failover-policy", type=click.Choice(["closest", "score"]), default=None, help="default: [failover] policy, closest")
@click.option("--events/--no-events", default=False, help="print leader/failover events as JSON lines")
@click.option(
    "--raft-leader-locality/--no-raft-leader-locality", default=True, show_default=True,
    help="on winning, move etcd's Raft leadership to the home region's member (needs --home-region and its endpoints)",
)
@click.option(
    "--contact-deadline", "contact_deadline", default=None, type=float,
    help="safe mode after this long without quorum contact, s (default: [consensus] contact_deadline_s, 0.6; 0: off)",
)
@observability_options
@friendly_errors
def orchestrator(
    config_path: str | None, endpoints: str | None, app_spec: str, namespace: str | None, node_id: str | None,
    lease_ttl: int | None, retention: float, latency_file: str | None, home_region: str | None,
    failover_policy: str | None, events: bool, raft_leader_locality: bool, contact_deadline: float | None,
    metrics_bind: str | None,
    tracing: bool | None, middleware: tuple[str, ...],
) -> None:
    """Run an orchestrator candidate until SIGINT/SIGTERM."""
    cfg = load_settings(config_path, endpoints=endpoints, namespace=namespace)
    if failover_policy is not None:
        policy: Literal["closest", "score"] = "score" if failover_policy == "score" else "closest"
        cfg = attrs.evolve(cfg, failover=attrs.evolve(cfg.failover, policy=policy))
    app = load_app(app_spec)
    router = cfg.router(home_region=home_region)
    if latency_file:
        with open(latency_file) as fh:
            router = Router(latency_ms=json.load(fh), home_region=home_region, failover_policy=cfg.failover.policy)
    timing = role_timing(cfg, lease_ttl)
    if contact_deadline is not None:
        cfg = attrs.evolve(cfg, consensus=attrs.evolve(cfg.consensus, contact_deadline_s=contact_deadline))
    deadline = cfg.consensus.contact_deadline_s or None
    obs = Observability(cfg, metrics_bind=metrics_bind, tracing=tracing, middleware=middleware)

    async def body(stop: asyncio.Event) -> None:
        async with EtcdClient(cfg.etcd_config()) as client:
            orch = Orchestrator(
                client, app, namespace=cfg.namespace, node_id=node_id, router=router, lease=timing,
                retention_s=retention, settings=cfg.settings(), on_event=emit_event if events else None,
                middleware=obs.middleware, contact_deadline_s=deadline,
                region_endpoints={r.name: r.endpoints for r in cfg.regions if r.endpoints},
                raft_leader_locality=raft_leader_locality,
            )
            async with orch:
                emit("orchestrator_ready", {"node": orch.node_id, **obs.fields()})
                await serve_role(stop, orch)

    with obs:
        run_until_signalled(body)
