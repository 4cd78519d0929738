"""The click command group and what its commands share: loading the App and the
configuration, observability options, errors as one clear line."""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import attrs
import click

import whizorch
from whizorch.config import WhizorchConfig, load_config
from whizorch.coord import LeaseTiming
from whizorch.errors import ConfigError, EtcdUnavailableError, WhizorchError
from whizorch.observe import Metrics, MetricsServer, Tracing, serve_metrics
from whizorch.saga import App, OrchestratorEvent, Saga

ENDPOINTS_HELP = "etcd endpoints, comma-separated HOST:PORT (default: the config's [etcd] endpoints, env WHIZORCH_ETCD_ENDPOINTS)"
CONFIG_HELP = "a whizorch TOML file (env WHIZORCH_CONFIG); see docs/configuration.md"
NAMESPACE_HELP = "the prefix of whizorch's keys in etcd (default: the config's namespace, 'whizorch')"
APP_HELP = (
    "your sagas: MODULE:OBJECT, where OBJECT is an App, a Saga, a list of Sagas or a function returning one "
    "(MODULE is imported from --app-dir first, then the installed packages)"
)
APP_DIR_HELP = "the directory --app's module is imported from, before the installed packages"
ETCD_FIX = (
    "check that etcd runs there, or point whizorch at it: --etcd HOST:PORT[,HOST:PORT...], "
    "WHIZORCH_ETCD_ENDPOINTS, or [etcd] endpoints in the config file (--config or WHIZORCH_CONFIG)"
)
"""The fix named by every 'cannot reach etcd' message of the command line."""
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
"""Every command's help: -h and --help, wrapped at 100 columns."""


def _said(message: str, **fields: Any) -> ConfigError:
    """A ConfigError whose message says it all (no ``(field=...)`` tail); the fields
    stay attributes."""
    exc = ConfigError(message, **fields)
    exc.args = (message,)
    return exc


def import_object(spec: str, *, field: str, app_dir: str | None = None) -> Any:
    """Import ``module:object``, naming ``field`` in the error. ``app_dir`` (a path) is
    put first on ``sys.path``, as uvicorn's ``--app-dir`` does, so a module in the
    directory the command runs from is found."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise _said(f"--{field} {spec!r} must look like module:object (for example shop.sagas:app)", field=field, value=spec)
    if app_dir is not None:
        path = os.path.abspath(app_dir)
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise  # the module itself was found; an import inside it failed: its traceback says where
        where = f" nor in {os.path.abspath(app_dir)}" if app_dir is not None else ""
        raise _said(
            f"--{field} {spec}: cannot import {module_name!r}: no module {exc.name!r} among the installed "
            f"packages{where}; run the command from the directory that holds it, pass --app-dir, or install your "
            "package",
            field=field, value=spec,
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        names = sorted(n for n, v in vars(module).items() if isinstance(v, (App, Saga)))
        hint = f" (it has: {', '.join(names)})" if names else ""
        raise _said(f"--{field} {spec}: {module_name!r} has no attribute {attr!r}{hint}", field=field, value=spec) from exc


def load_app(spec: str, *, app_dir: str | None = ".") -> App:
    """Import ``module:object``; the object is an App, a Saga, a list of Sagas, or a
    callable returning one of those."""
    obj: Any = import_object(spec, field="app", app_dir=app_dir)
    if callable(obj) and not isinstance(obj, (App, Saga)):
        obj = obj()
    if isinstance(obj, App):
        return obj
    if isinstance(obj, Saga):
        return App([obj])
    if isinstance(obj, (list, tuple)) and all(isinstance(s, Saga) for s in obj):
        return App(obj)
    raise _said(
        f"--app {spec} must name an App, a Saga or a list of Sagas, not a {type(obj).__name__}", field="app", value=spec
    )


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
        except EtcdUnavailableError as exc:
            click.echo(f"whizorch: cannot reach etcd: {' '.join(str(exc).split())}; {ETCD_FIX}", err=True)
            sys.exit(2)
        except WhizorchError as exc:
            click.echo(f"whizorch: {type(exc).__name__}: {exc}", err=True)
            sys.exit(2)

    return wrapper


def emit(kind: str, fields: dict[str, Any]) -> None:
    """One JSON line on stdout (``--events``)."""
    sys.stdout.write(json.dumps({"event": kind, **fields}, default=str) + "\n")
    sys.stdout.flush()


def emit_event(event: OrchestratorEvent) -> None:
    """An orchestrator's event as one JSON line (``--events``)."""
    emit(event.kind, event.fields())


@click.group(context_settings=CONTEXT)
@click.version_option(whizorch.__version__, "-V", "--version", prog_name="whizorch", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", count=True, help="more logging on stderr (-v: info, -vv: debug; default: warnings)")
def main(verbose: int) -> None:
    """whizorch: multi-region sagas, consensus delegated to etcd.

    Run a local etcd (dev), your sagas' roles (worker, orchestrator), check an App
    against the configuration (check), inspect and drive a deployment (status, sagas),
    confine processes to their keys (roles), or see it all at work (demo, lab).
    The user guide: docs/guide/index.md.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


