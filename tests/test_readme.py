"""The README and the development page stay true: their Python parses, their commands exist.

(Their commands' options are checked against the CLI by tests/test_guide.py.)
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

from whizorch.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DEVELOPMENT = (ROOT / "docs" / "development.md").read_text()


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("index", range(len(blocks(DEVELOPMENT, "python"))))
def test_development_python_examples_parse(index: int) -> None:
    """Every Python example of docs/development.md (the README's former reference sections) is valid syntax."""
    ast.parse(blocks(DEVELOPMENT, "python")[index])


def test_readme_whizorch_commands_exist() -> None:
    """Every `whizorch <command>` the README shows is a real command; its quickstart runs the roles and the checks."""
    used = set(re.findall(r"^whizorch ([a-z]+)", "\n".join(blocks(README, "sh")), flags=re.M))
    assert used >= {"orchestrator", "worker", "sagas", "check", "dev"}
    assert used <= set(main.commands), used - set(main.commands)
