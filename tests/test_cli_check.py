"""`whizorch check` and the same check at role start; `--app` found in the current directory."""

from __future__ import annotations

import os
import pathlib
import sys
import textwrap

import pytest
from click.testing import CliRunner

from whizorch.cli import main
from whizorch.cli._check import check_app, refuse_misfit
from whizorch.cli._main import load_app
from whizorch.config import load_config
from whizorch.errors import ConfigError
from whizorch.saga import App, Saga

APP = textwrap.dedent(
    """
    from whizorch.saga import App, Saga

    order = Saga("order")

    @order.step(region="eu")
    async def reserve(ctx, cmd):
        return None

    @order.step(region="ap", compliance={"pci"})
    async def charge(ctx, cmd):
        return None

    @order.step
    async def ship(ctx, cmd):  # no compensation anywhere: not a problem
        return None

    app = App([order])
    """
)
CONFIG = textwrap.dedent(
    """
    [regions.eu]
    compliance = ["gdpr"]

    [regions.us]
    """
)


@pytest.fixture
def project(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """A directory with a module `mistakes.py` and a `whizorch.toml`; it is the current
    directory, which is not on sys.path (as for the `whizorch` console script)."""
    (tmp_path / "mistakes.py").write_text(APP)
    (tmp_path / "whizorch.toml").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "mistakes", raising=False)
    for name in [n for n in os.environ if n.startswith("WHIZORCH_")]:
        monkeypatch.delenv(name)
    return tmp_path


def _app() -> App:
    order = Saga("order")
    order.step(region="eu")(_handler)
    order.step(name="charge", region="ap", compliance={"pci"})(_handler)
    order.step(name="both", compliance={"gdpr", "pci"})(_handler)
    return App([order])


async def _handler(ctx: object, cmd: object) -> None:
    return None


def test_check_names_the_unknown_region_and_the_tags_no_region_holds(tmp_path: pathlib.Path) -> None:
    """A step region that is not configured, and compliance tags no configured region holds, are problems naming saga, step, field and fix."""
    path = tmp_path / "w.toml"
    path.write_text(CONFIG)
    problems = [str(p) for p in check_app(_app(), load_config(path, env={}))]
    assert problems == [
        "saga 'order' step 'charge': region='ap' is not a configured region (configured: eu, us): "
        "fix the step's region=, or add [regions.ap] to the configuration",
        "saga 'order' step 'charge': compliance=['pci'] is held by no configured region (tags configured: gdpr; "
        "missing: pci): add the tags to a region's compliance = [...], or remove them from the step",
        "saga 'order' step 'both': compliance=['gdpr', 'pci'] is held by no configured region (tags configured: "
        "gdpr; missing: pci): add the tags to a region's compliance = [...], or remove them from the step",
    ]


def test_check_needs_tags_held_together(tmp_path: pathlib.Path) -> None:
    """Tags held by two different regions do not serve a step that needs both at once."""
    path = tmp_path / "w.toml"
    path.write_text('[regions.eu]\ncompliance = ["gdpr"]\n[regions.us]\ncompliance = ["pci"]\n')
    saga = Saga("s")
    saga.step(compliance={"gdpr", "pci"})(_handler)
    (problem,) = check_app(App([saga]), load_config(path, env={}))
    assert "is held together by no configured region" in str(problem) and "missing: gdpr, pci" in str(problem)


def test_a_configuration_without_regions_checks_nothing() -> None:
    """With no [regions.<name>] there is nothing to check against: no problem, roles start."""
    cfg = load_config(None, env={})
    assert check_app(_app(), cfg) == []
    refuse_misfit(_app(), cfg, "m:app", config_path=None, region="anywhere")


def test_roles_refuse_to_start_on_the_same_problems(tmp_path: pathlib.Path) -> None:
    """refuse_misfit (run by worker and orchestrator before anything else) raises one ConfigError listing each problem, and a worker's unknown --region."""
    path = tmp_path / "w.toml"
    path.write_text(CONFIG)
    with pytest.raises(ConfigError) as info:
        refuse_misfit(_app(), load_config(path, env={}), "m:app", config_path=str(path), region="ue")
    text = str(info.value)
    assert text.startswith(f"m:app does not fit the configuration (4 problems; `whizorch check --app m:app --config {path}`")
    assert "--region 'ue' is not a configured region (configured: eu, us)" in text
    assert "region='ap' is not a configured region" in text and "(field=" not in text


def test_check_command_exits_1_listing_each_problem(project: pathlib.Path) -> None:
    """`whizorch check --app M:APP --config F` prints one line per problem and a verdict, exit 1; the module is found in the current directory."""
    result = CliRunner().invoke(main, ["check", "--app", "mistakes:app", "--config", "whizorch.toml"], prog_name="whizorch")
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("error: saga 'order' step 'charge': region='ap' is not a configured region")
    assert lines[-1] == "mistakes:app: 1 saga, 3 steps; 2 configured regions: 2 problems"


def test_check_command_passes_a_fitting_app(project: pathlib.Path) -> None:
    """An App whose steps fit the configuration: exit 0 and `ok`."""
    (project / "fits.py").write_text("from whizorch.saga import Saga\ns = Saga('s')\n@s.step(region='us')\nasync def a(ctx, cmd):\n    return 1\n")
    result = CliRunner().invoke(main, ["check", "--app", "fits:s", "--config", "whizorch.toml"], prog_name="whizorch")
    assert result.exit_code == 0 and result.output == "fits:s: 1 saga, 1 step; 2 configured regions: ok\n"


def test_worker_refuses_to_start_with_the_problems(project: pathlib.Path) -> None:
    """`whizorch worker` with a misfit App exits 2 before reaching for etcd, printing the problems."""
    result = CliRunner().invoke(
        main, ["worker", "--app", "mistakes:app", "--config", "whizorch.toml", "--region", "eu", "--etcd", "127.0.0.1:1"],
        prog_name="whizorch",
    )
    assert result.exit_code == 2
    assert "does not fit the configuration (2 problems" in result.output and "region='ap'" in result.output


def test_orchestrator_refuses_to_start_with_the_problems(project: pathlib.Path) -> None:
    """`whizorch orchestrator` with a misfit App exits 2 before reaching for etcd, printing the problems."""
    result = CliRunner().invoke(
        main, ["orchestrator", "--app", "mistakes:app", "--config", "whizorch.toml", "--etcd", "127.0.0.1:1"],
        prog_name="whizorch",
    )
    assert result.exit_code == 2
    assert "does not fit the configuration (2 problems" in result.output and "compliance=['pci']" in result.output


def test_app_is_found_in_the_current_directory(project: pathlib.Path) -> None:
    """`--app mistakes:app` imports mistakes.py from the current directory, as uvicorn and celery do."""
    assert isinstance(load_app("mistakes:app"), App)


def test_app_dir_and_a_missing_module_say_what_to_do(project: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A module in neither the installed packages nor --app-dir: the error names both and the fixes; an attribute missing lists what is there."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    with pytest.raises(ConfigError) as info:
        load_app("nosuch.sagas:app", app_dir=str(elsewhere))
    assert f"no module 'nosuch' among the installed packages nor in {elsewhere}" in str(info.value)
    assert "pass --app-dir, or install your package" in str(info.value)
    with pytest.raises(ConfigError, match=r"'mistakes' has no attribute 'apps' \(it has: app, order\)"):
        load_app("mistakes:apps")


def test_an_import_error_inside_the_app_is_not_hidden(project: pathlib.Path) -> None:
    """A module that is found but fails to import shows its own error (a missing dependency), not 'cannot import'."""
    (project / "broken.py").write_text("import no_such_dependency_xyz\n")
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        load_app("broken:app")
