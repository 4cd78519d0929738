"""Every command's help is click's, in one style, with every option described; --version."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

import whizorch
from whizorch.cli import main


def _walk(cmd: click.Command, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], click.Command]]:
    out = [(path, cmd)]
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            out += _walk(sub, (*path, name))
    return out


COMMANDS = _walk(main, ())


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=lambda x: " ".join(x) if isinstance(x, tuple) else "")
def test_every_option_has_help(path: tuple[str, ...], cmd: click.Command) -> None:
    """Each option of each command (dev and lab included) says what it does; hidden options excepted."""
    missing = [
        p.opts[0] for p in cmd.params
        if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()
    ]  # fmt: skip
    assert not missing, f"whizorch {' '.join(path)}: options without help: {missing}"
    assert (cmd.help or "").strip(), f"whizorch {' '.join(path)} has no description"


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=lambda x: " ".join(x) if isinstance(x, tuple) else "")
def test_help_is_clicks_for_every_command(path: tuple[str, ...], cmd: click.Command) -> None:
    """`whizorch ... --help` and `-h` print click's usage line and an Options section, and exit 0."""
    for flag in ("--help", "-h"):
        result = CliRunner().invoke(main, [*path, flag], prog_name="whizorch")
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"Usage: whizorch {' '.join(path)}".rstrip()), result.output[:200]
        assert "\nOptions:\n" in result.output


def test_dev_help_lists_its_options() -> None:
    """`whizorch dev --help` shows dev's own options (it used to pass --help through and show none)."""
    out = CliRunner().invoke(main, ["dev", "--help"]).output
    for option in ("--members", "--heartbeat-ms", "--election-ms", "--config", "--data-dir", "--etcd-bin", "--start-timeout"):
        assert option in out


def test_lab_help_is_in_the_same_style() -> None:
    """`whizorch lab --help` is click's help like every other command's, not argparse's."""
    out = CliRunner().invoke(main, ["lab", "--help"], prog_name="whizorch").output
    assert out.startswith("Usage: whizorch lab [OPTIONS]") and "--rtt A:B=MS" in out
    assert "optional arguments" not in out and "options:\n" not in out


def test_roles_help_names_the_region_tables_as_the_config_spells_them() -> None:
    """`roles show --help` speaks of [regions.<name>] tables, as the configuration writes them, not [[regions]]."""
    out = CliRunner().invoke(main, ["roles", "show", "--help"], terminal_width=200).output
    assert "[[regions]]" not in out and "[regions.<name>]" in out


def test_version() -> None:
    """`whizorch --version` (and -V) prints the package's version."""
    for flag in ("--version", "-V"):
        result = CliRunner().invoke(main, [flag])
        assert result.exit_code == 0 and result.output == f"whizorch {whizorch.__version__}\n"
