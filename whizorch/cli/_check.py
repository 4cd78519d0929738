"""``whizorch check``: an App checked against the configuration before it is deployed.

A step can name what no region of the deployment offers: ``region="ap"`` where no
``[regions.ap]`` is configured, or a compliance tag no configured region holds. Such a
step would never run where its author meant it to, so ``whizorch check --app M:APP``
lists each problem on one line (the saga, the step, the field and the fix) and exits 1,
and ``whizorch worker`` and ``whizorch orchestrator`` refuse to start on the same
problems. A configuration that names no regions is not checked against (a deployment
may learn its regions from its workers alone).

Only facts are checked, never taste: a step without a compensation is not a problem.
"""

from __future__ import annotations

import attrs
import click

from whizorch.cli._main import (
    APP_DIR_HELP,
    APP_HELP,
    CONFIG_HELP,
    friendly_errors,
    load_app,
    load_settings,
    main,
)
from whizorch.config import WhizorchConfig
from whizorch.errors import ConfigError
from whizorch.saga import App

__all__ = ["Problem", "check_app", "refuse_misfit"]


@attrs.frozen
class Problem:
    """One thing in an App that the configuration cannot honour."""

    saga: str
    step: str
    field: str
    message: str
    """What is wrong and how to fix it."""

    def __str__(self) -> str:
        return f"saga {self.saga!r} step {self.step!r}: {self.field} {self.message}"


def check_app(app: App, cfg: WhizorchConfig) -> list[Problem]:
    """Each step's region and compliance tags against the configured regions (none
    when the configuration names no regions)."""
    if not cfg.regions:
        return []
    names = [r.name for r in cfg.regions]
    problems = []
    for saga in app.sagas.values():
        for step in saga.steps:
            if step.region is not None and step.region not in names:
                problems.append(Problem(
                    saga.name, step.name, f"region={step.region!r}",
                    f"is not a configured region (configured: {', '.join(names)}): fix the step's region=, "
                    f"or add [regions.{step.region}] to the configuration",
                ))  # fmt: skip
            if step.compliance and not any(step.compliance <= set(r.compliance) for r in cfg.regions):
                held = sorted({t for r in cfg.regions for t in r.compliance})
                missing = sorted(step.compliance - set(held)) or sorted(step.compliance)
                together = "" if set(missing) != step.compliance or len(missing) == 1 else " together"
                problems.append(Problem(
                    saga.name, step.name, f"compliance={sorted(step.compliance)}",
                    f"is held{together} by no configured region (tags configured: {', '.join(held) or 'none'}; "
                    f"missing: {', '.join(missing)}): add the tags to a region's compliance = [...], "
                    f"or remove them from the step",
                ))  # fmt: skip
    return problems


def refuse_misfit(
    app: App, cfg: WhizorchConfig, app_spec: str, *, config_path: str | None, region: str | None = None
) -> None:
    """Refuse to start a role whose App (or ``--region``) the configuration cannot
    honour: a ConfigError listing every problem, as ``whizorch check`` prints them."""
    lines = [str(p) for p in check_app(app, cfg)]
    names = [r.name for r in cfg.regions]
    if region is not None and names and region not in names:
        lines.insert(0, f"--region {region!r} is not a configured region (configured: {', '.join(names)}): "
                        f"start the worker with one of them, or add [regions.{region}] to the configuration")  # fmt: skip
    if lines:
        detail = "\n  ".join(lines)
        command = f"whizorch check --app {app_spec}" + (f" --config {config_path}" if config_path else "")
        message = (
            f"{app_spec} does not fit the configuration ({_count(len(lines), 'problem')}; "
            f"`{command}` lists them too):\n  {detail}"
        )
        exc = ConfigError(message, field="app", value=app_spec)
        exc.args = (message,)  # the message names the app: no "(field=...)" tail
        raise exc


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' if n != 1 else ''}"


@main.command()
@click.option("--app", "app_spec", required=True, metavar="MODULE:OBJECT", help=APP_HELP)
@click.option("--app-dir", default=".", show_default=True, type=click.Path(file_okay=False), help=APP_DIR_HELP)
@click.option("--config", "config_path", envvar="WHIZORCH_CONFIG", default=None, metavar="FILE", help=CONFIG_HELP)
@friendly_errors
def check(app_spec: str, app_dir: str, config_path: str | None) -> None:
    """Check an App against the configuration, before deploying it.

    Loads the App and the configuration (defaults < --config file < WHIZORCH_* env) and
    prints one line per problem: a step whose region is not a configured region, or
    whose compliance tags no configured region holds. Exit status 0 when there is
    none, 1 when there are problems, 2 when the App or the configuration does not load.
    A configuration without regions is not checked against. worker and orchestrator
    refuse to start on the same problems.
    """
    app = load_app(app_spec, app_dir=app_dir)
    cfg = load_settings(config_path)
    problems = check_app(app, cfg)
    steps = sum(len(s.steps) for s in app.sagas.values())
    where = _count(len(cfg.regions), "configured region") if cfg.regions else "no configured regions (nothing to check against)"
    for p in problems:
        click.echo(f"error: {p}")
    verdict = _count(len(problems), "problem") if problems else "ok"
    click.echo(f"{app_spec}: {_count(len(app.sagas), 'saga')}, {_count(steps, 'step')}; {where}: {verdict}")
    if problems:
        raise SystemExit(1)
