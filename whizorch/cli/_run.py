"""``whizorch worker`` and ``whizorch orchestrator``: your sagas' roles as processes.

Both check the App against the configuration before anything else (``_check``), then
live as ``_lifecycle`` says: signals first, etcd's first answer, ready, a prompt stop.
"""

from __future__ import annotations

import json
from typing import Literal

import attrs
import click

from whizorch.cli._check import refuse_misfit
from whizorch.cli._lifecycle import (
    StopSignal,
    close_role,
    open_client,
    run_until_signalled,
    serve_role,
    until_stopped,
    wait_for_etcd,
)
from whizorch.cli._main import (
    APP_DIR_HELP,
    APP_HELP,
    CONFIG_HELP,
    ENDPOINTS_HELP,
    NAMESPACE_HELP,
    Observability,
    emit,
    emit_event,
    friendly_errors,
    load_app,
    load_settings,
    main,
    observability_options,
    role_timing,
)
from whizorch.saga import Keys, Orchestrator, Router, Worker


def role_options(fn: click.decorators.FC) -> click.decorators.FC:
    """--config, --etcd, --app, --app-dir, --namespace (shared by the roles)."""
    for option in reversed((
        click.option("--config", "config_path", envvar="WHIZORCH_CONFIG", default=None, metavar="FILE", help=CONFIG_HELP),
        click.option("--etcd", "endpoints", default=None, metavar="ENDPOINTS", help=ENDPOINTS_HELP),
        click.option("--app", "app_spec", required=True, metavar="MODULE:OBJECT", help=APP_HELP),
        click.option("--app-dir", default=".", show_default=True, type=click.Path(file_okay=False), help=APP_DIR_HELP),
        click.option("--namespace", default=None, help=NAMESPACE_HELP),
    )):  # fmt: skip
        fn = option(fn)
    return fn


@main.command()
@role_options
@click.option("--region", required=True, help="the region this worker serves (a [regions.<name>] of the config, when it names regions)")
@click.option("--id", "worker_id", default=None, help="worker id, shown by status (default: HOST-PID-REGION)")
@click.option("--concurrency", default=16, show_default=True, type=click.IntRange(min=1), help="step handlers run at once, at most")
@click.option("--compliance", default=None, help="compliance tags, comma-separated (default: the region's in the config)")
@click.option("--cost", default=None, type=float, help="relative cost (default: the region's in the config, 0)")
@click.option("--lease-ttl", default=None, type=click.IntRange(min=1), help="liveness lease TTL in s (default: [consensus] lease_ttl_s, 5)")
@click.option("--drain-timeout", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="on SIGTERM/SIGINT, seconds running handlers may take to finish (a second signal stops at once)")
@observability_options
@friendly_errors
def worker(
    config_path: str | None, endpoints: str | None, app_spec: str, app_dir: str, namespace: str | None, region: str,
    worker_id: str | None, concurrency: int, compliance: str | None, cost: float | None, lease_ttl: int | None,
    drain_timeout: float, metrics_bind: str | None, tracing: bool | None, middleware: tuple[str, ...],
) -> None:
    """Run a regional worker: it runs the steps the leader gives its region.

    Prints {"event": "worker_ready", ...} on stdout once registered in etcd (until
    etcd answers it logs why not, and how to fix it, on stderr). SIGTERM or SIGINT
    drains: no new step, running handlers finish (up to --drain-timeout), then it
    exits 0; a second signal stops at once. Exit status 2 on bad configuration or an
    App that does not fit it (see whizorch check).
    """
    cfg = load_settings(config_path, endpoints=endpoints, namespace=namespace)
    app = load_app(app_spec, app_dir=app_dir)
    refuse_misfit(app, cfg, app_spec, config_path=config_path, region=region)
    home = cfg.region(region)
    tags = [t for t in compliance.split(",") if t] if compliance is not None else list(home.compliance if home else ())
    timing = role_timing(cfg, lease_ttl)
    etcd = cfg.etcd_config(region if home is not None else None)
    obs = Observability(cfg, metrics_bind=metrics_bind, tracing=tracing, middleware=middleware)

    async def body(stop: StopSignal) -> None:
        # a worker's etcd role may read its region's tasks: that read is the probe
        await wait_for_etcd(etcd, Keys(cfg.namespace).region_tasks(region), stop)
        client = await open_client(etcd, stop)
        try:
            w = Worker(
                client, app, region=region, namespace=cfg.namespace, worker_id=worker_id, concurrency=concurrency,
                compliance=tags, cost=cost if cost is not None else (home.cost if home else 0.0),
                middleware=obs.middleware, drain_timeout_s=drain_timeout, lease=timing,
            )
            try:
                await until_stopped(stop, w.start())
            except BaseException:
                await close_role(stop, w.aclose(drain=False), limit_s=w.lease_ttl_s, name=f"worker {w.worker_id}")
                raise
            try:
                emit("worker_ready", {"region": region, "worker": w.worker_id, **obs.fields()})
                await serve_role(stop, w, lambda: (
                    f"draining: no new step; {w.running} running handler{'' if w.running == 1 else 's'} may take up "
                    f"to {drain_timeout:g}s to finish (a second signal stops at once)"
                ) if w.running else "draining: no step runs here; leaving")
            finally:
                limit = drain_timeout + w.lease_ttl_s
                await close_role(stop, w.aclose(), limit_s=limit, name=f"worker {w.worker_id}")
            emit("worker_stopped", {"region": region, "completed": w.completed})
        finally:
            await client.close()

    with obs:
        run_until_signalled(body)


@main.command()
@role_options
@click.option("--id", "node_id", default=None, help="node id, shown by status (default: HOST-PID)")
@click.option("--lease-ttl", default=None, type=click.IntRange(min=1), help="leader lease TTL in s (default: [consensus] lease_ttl_s, 5)")
@click.option("--retention", default=3600.0, show_default=True, type=click.FloatRange(min=0),
              help="seconds a finished saga's record, input and outputs are kept (a failed one: until purged by hand)")
@click.option("--latency", "latency_file", default=None, type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="JSON {src: {dst: ms}} (default: the config's regions' latency_ms)")
@click.option("--home-region", default=None, help="the region this orchestrator runs in: routing measures latency from it")
@click.option("--failover-policy", type=click.Choice(["closest", "score"]), default=None,
              help="where a dead region's steps go (default: [failover] policy, closest)")
@click.option("--events/--no-events", default=False, help="print leader/failover events as JSON lines on stdout")
@click.option(
    "--raft-leader-locality/--no-raft-leader-locality", default=True, show_default=True,
    help="on winning, move etcd's Raft leadership to the home region's member (needs --home-region and its endpoints)",
)
@click.option(
    "--shards", default=None, type=click.IntRange(1, 1024),
    help="shards of a namespace this node creates (default: [consensus] shards, 4; an existing namespace keeps its own)",
)
@click.option(
    "--contact-deadline", "contact_deadline", default=None, type=click.FloatRange(min=0),
    help="safe mode after this long without quorum contact, s (default: [consensus] contact_deadline_s, 0.6; 0: off)",
)
@observability_options
@friendly_errors
def orchestrator(
    config_path: str | None, endpoints: str | None, app_spec: str, app_dir: str, namespace: str | None,
    node_id: str | None, lease_ttl: int | None, retention: float, latency_file: str | None, home_region: str | None,
    failover_policy: str | None, events: bool, raft_leader_locality: bool, shards: int | None,
    contact_deadline: float | None, metrics_bind: str | None, tracing: bool | None, middleware: tuple[str, ...],
) -> None:
    """Run an orchestrator: it leads its share of the namespace's shards.

    Prints {"event": "orchestrator_ready", ...} on stdout once etcd answered and it
    campaigns (until etcd answers it logs why not, and how to fix it, on stderr).
    SIGTERM or SIGINT stops it (it resigns its shards, the others take them over) and
    it exits 0. Exit status 2 on bad configuration or an App that does not fit it (see
    whizorch check).
    """
    cfg = load_settings(config_path, endpoints=endpoints, namespace=namespace)
    if failover_policy is not None:
        policy: Literal["closest", "score"] = "score" if failover_policy == "score" else "closest"
        cfg = attrs.evolve(cfg, failover=attrs.evolve(cfg.failover, policy=policy))
    app = load_app(app_spec, app_dir=app_dir)
    refuse_misfit(app, cfg, app_spec, config_path=config_path)
    router = cfg.router(home_region=home_region)
    if latency_file:
        with open(latency_file) as fh:
            router = Router(latency_ms=json.load(fh), home_region=home_region, failover_policy=cfg.failover.policy)
    timing = role_timing(cfg, lease_ttl)
    if contact_deadline is not None:
        cfg = attrs.evolve(cfg, consensus=attrs.evolve(cfg.consensus, contact_deadline_s=contact_deadline))
    deadline = cfg.consensus.contact_deadline_s or None
    obs = Observability(cfg, metrics_bind=metrics_bind, tracing=tracing, middleware=middleware)
    etcd = cfg.etcd_config()

    async def body(stop: StopSignal) -> None:
        # the orchestrator's etcd role may read the election's keys: that read is the probe
        await wait_for_etcd(etcd, (Keys(cfg.namespace).leader + "/").encode(), stop)
        client = await open_client(etcd, stop)
        try:
            orch = Orchestrator(
                client, app, namespace=cfg.namespace, node_id=node_id, router=router, lease=timing,
                retention_s=retention, settings=cfg.settings(), on_event=emit_event if events else None,
                middleware=obs.middleware, contact_deadline_s=deadline,
                region_endpoints={r.name: r.endpoints for r in cfg.regions if r.endpoints},
                raft_leader_locality=raft_leader_locality,
                shards=shards if shards is not None else cfg.consensus.shards,
            )
            await orch.start()
            try:
                emit("orchestrator_ready", {"node": orch.node_id, **obs.fields()})
                await serve_role(stop, orch, lambda: "stopping: " + ("resigning" if orch.is_leader else "leaving the election"))
            finally:
                await close_role(stop, orch.aclose(), limit_s=orch.lease_ttl_s, name=f"orchestrator {orch.node_id}")
        finally:
            await client.close()

    with obs:
        run_until_signalled(body)
