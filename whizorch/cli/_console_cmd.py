"""``whizorch console``: the web console (needs ``pip install 'whizorch[console]'``)."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import sys

import attrs
import click

from whizorch.cli._lifecycle import StopSignal, run_until_signalled, wait_for_etcd
from whizorch.cli._main import (
    CONFIG_HELP,
    ENDPOINTS_HELP,
    NAMESPACE_HELP,
    friendly_errors,
    load_settings,
    main,
)
from whizorch.etcd import EtcdClient

MISSING = "whizorch console needs its extra: pip install 'whizorch[console]' (Starlette, uvicorn, Jinja2)"


def console_installed() -> bool:
    """Whether the console's dependencies are importable."""
    return all(importlib.util.find_spec(m) is not None for m in ("starlette", "uvicorn", "jinja2"))


@main.command()
@click.option("--config", "config_path", envvar="WHIZORCH_CONFIG", default=None, metavar="FILE", help=CONFIG_HELP)
@click.option("--etcd", "endpoints", default=None, metavar="ENDPOINTS", help=ENDPOINTS_HELP)
@click.option("--namespace", default=None, help=NAMESPACE_HELP)
@click.option("--bind", default="127.0.0.1:8470", show_default=True, metavar="HOST:PORT",
              help="where to listen; anything but loopback needs --token (port 0: any free port)")
@click.option("--token", envvar="WHIZORCH_CONSOLE_TOKEN", default=None, show_envvar=True,
              help="a secret of 16+ characters every request must carry (login form, or Authorization: Bearer)")
@click.option("--allow-actions", is_flag=True,
              help="offer cancel and resubmit (each confirmed); without it the console is read-only")
@friendly_errors
def console(
    config_path: str | None, endpoints: str | None, namespace: str | None, bind: str, token: str | None,
    allow_actions: bool,
) -> None:
    """A live web console of a deployment: leader, regions, sagas, a saga's timeline.

    \b
    Pages: the overview (leader and term, regions with health, workers, load and
    capacity, sagas by status, etcd members, latency, quarantined input), the
    saga list (filters by status, type, region, id prefix and age; failed only in one
    click; paged over the whole namespace) and each saga (a timeline with a lane per
    region and one for compensations, every run with its worker, fence token and
    error, failovers and leader changes with the time they cost, the history with
    etcd revisions, input and outputs). Every page updates live from one etcd watch.

    It reads only: the etcd viewer role `whizorch roles` makes is enough. With
    --allow-actions it can cancel a saga and resubmit a finished one (the console
    role). Binds 127.0.0.1 unless told otherwise, and refuses a non-loopback --bind
    without --token. Stops on SIGINT/SIGTERM. Details: docs/console.md.
    """
    if not console_installed():
        click.echo(f"whizorch: {MISSING}", err=True)
        sys.exit(2)
    from whizorch.console import ConsoleServer, ConsoleSettings, parse_bind

    cfg = load_settings(config_path, endpoints=endpoints, namespace=namespace)
    host, port = parse_bind(bind)
    settings = ConsoleSettings(host=host, port=port, token=token or None, allow_actions=allow_actions)
    etcd_config = attrs.evolve(cfg.etcd_config(), retry_deadline_s=5.0)

    async def body(stop: StopSignal) -> None:
        # a signal stops it while etcd does not answer yet, which it says, with the fix
        await wait_for_etcd(etcd_config, f"{cfg.namespace}/".encode(), stop)
        async with EtcdClient(etcd_config) as client:
            click.echo(f"whizorch console: reading namespace {cfg.namespace!r} from {','.join(cfg.etcd.endpoints)} ...")
            async with ConsoleServer(
                client, settings, namespace=cfg.namespace, regions=[r.name for r in cfg.regions]
            ) as server:
                mode = "actions allowed" if allow_actions else "read-only"
                login = "; log in with the token" if settings.token else ""
                hub = server.hub
                # what the first read built lives as long as the process: out of the
                # collector's way, so no full collection (about 30 ms per 60,000 sagas
                # indexed) lands in the middle of a page
                gc.collect()
                gc.freeze()
                click.echo(
                    f"whizorch console: {server.url} ({mode}{login}); {len(hub.index):,} sagas read in "
                    f"{hub.load_seconds or 0:.2f}s at revision {hub.revision}; Ctrl-C stops it",
                )
                sys.stdout.flush()
                stopped = asyncio.create_task(stop.requested.wait())
                ended = asyncio.create_task(server.join())
                done, _ = await asyncio.wait({stopped, ended}, return_when=asyncio.FIRST_COMPLETED)
                for t in (stopped, ended):
                    if t not in done:
                        t.cancel()
                if ended in done:
                    ended.result()

    run_until_signalled(body)
