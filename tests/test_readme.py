"""The README's examples stay true: its TOML loads, its Python parses, its commands exist."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

from whizorch.cli import main
from whizorch.config import load_config

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_toml_example_is_a_valid_configuration(tmp_path: pathlib.Path) -> None:
    """The configuration example loads without error and means what its comments say."""
    (toml,) = blocks("toml")
    path = tmp_path / "whizorch.toml"
    path.write_text(toml)
    cfg = load_config(path, env={})
    assert [r.name for r in cfg.regions] == ["eu", "us", "ap"]
    assert cfg.monitoring.metrics and cfg.monitoring.tracing
    assert cfg.etcd_config("eu").endpoints[0] == "10.0.0.1:2379"


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_readme_python_examples_parse(index: int) -> None:
    """Every Python example in the README is valid syntax."""
    ast.parse(blocks("python")[index])


def test_readme_whizorch_commands_exist() -> None:
    """Every `whizorch <command>` the README shows is a real command of the CLI."""
    used = set(re.findall(r"^whizorch ([a-z]+)", "\n".join(blocks("sh")), flags=re.M))
    assert used >= {"orchestrator", "worker", "status", "sagas"}
    assert used <= set(main.commands), used - set(main.commands)
