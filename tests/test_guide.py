"""The user guide cannot rot: each block is an excerpt of a tested file, runs, or is a
command the CLI accepts; its links resolve; its option tables match the code.

The quickstart's commands themselves run against real etcd in
integration/test_guide_quickstart.py; the example's tests in integration/test_examples.py.
"""

from __future__ import annotations

import inspect
import pathlib
import re
import shutil
import subprocess
import textwrap

import attrs
import click
import pytest
import yaml
from _docblocks import GUIDE, ROOT, Block, blocks, commands, guide_pages
from prometheus_client import CollectorRegistry

from whizorch.cli import main
from whizorch.config import load_config
from whizorch.observe import Metrics
from whizorch.saga import Retry, Saga, StepContext

PAGES = guide_pages()
README = ROOT / "README.md"
ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]
SH_PAGES = [*PAGES, README, ROOT / "docs" / "development.md", ROOT / "docs" / "security.md"]


def test_the_guide_has_its_pages() -> None:
    """The guide has the pages its index promises: install, quickstart, writing, testing, deploying, operating."""
    names = {p.stem for p in PAGES}
    assert names >= {"index", "install", "quickstart", "writing-sagas", "testing", "deploying", "operating"}


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.file is not None], ids=str)
def test_file_blocks_are_verbatim_excerpts(block: Block) -> None:
    """A block marked `file: PATH` is a verbatim excerpt of PATH, so PATH's tests run what the guide shows."""
    assert block.file is not None and block.file.is_file(), f"{block}: no such file"
    assert block.text in block.file.read_text(), f"{block}: not a verbatim excerpt of {block.file}"


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang == "python"], ids=str)
def test_python_blocks_are_excerpts_or_run(block: Block) -> None:
    """Every Python block is an excerpt of a tested file, or runs as is."""
    assert block.marker is not None and (block.file is not None or block.marker == "run"), (
        f"{block}: mark it <!-- file: PATH --> or <!-- run -->"
    )
    if block.marker == "run":
        exec(compile(block.text, str(block), "exec"), {"__name__": "guide_block"})


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang in ("toml", "yaml")], ids=str)
def test_configuration_blocks_load(block: Block, tmp_path: pathlib.Path) -> None:
    """Every TOML block loads as a whizorch configuration; every YAML block is an excerpt of a file that parses."""
    if block.lang == "toml":
        if block.file is not None and block.file.name == "pyproject.toml":
            return  # pytest's settings, checked by running the example's tests
        path = tmp_path / "whizorch.toml"
        path.write_text(block.text)
        load_config(path, env={})
    else:
        assert block.file is not None, f"{block}: a YAML block must be an excerpt of a file"
        yaml.safe_load(block.file.read_text())


def _leaf(argv: list[str]) -> tuple[click.Command, str, list[str]]:
    """The command an argv names, and its own arguments (group options skipped)."""
    cmd: click.Command = main
    name, args = "whizorch", argv[1:]
    while isinstance(cmd, click.Group):
        while args and args[0].startswith("-"):
            args = args[1:]  # -v and the like
        assert args, f"{argv}: names no command"
        ctx = click.Context(cmd, info_name=name)
        sub = cmd.get_command(ctx, args[0])
        assert sub is not None, f"{argv}: {args[0]!r} is not a command of {name}"
        cmd, name, args = sub, args[0], args[1:]
    return cmd, name, args


@pytest.mark.parametrize(
    "argv",
    [argv for page in SH_PAGES for b in blocks(page) if b.lang == "sh" for argv in commands(b.text)],
    ids=lambda argv: " ".join(argv)[:80],
)
def test_documented_commands_are_accepted_by_the_cli(argv: list[str]) -> None:
    """Every `whizorch ...` line of the guide, the README and the reference pages parses: the command and its options exist, none required is missing."""
    if argv[1:] in (["--version"], ["--help"]):
        return
    cmd, name, args = _leaf(argv)
    cmd.make_context(name, args)


_LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


@pytest.mark.parametrize("page", [*PAGES, README, ROOT / "docs" / "development.md"], ids=lambda p: p.name)
def test_relative_links_resolve(page: pathlib.Path) -> None:
    """Every relative link of the guide, the README and the development page names an existing file."""
    for target, _anchor in _LINK.findall(page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def test_readme_leads_to_the_guide_and_keeps_the_two_commands_on_top() -> None:
    """The README links the guide before anything else, keeps `make demo` and `make test` first, and installs honestly."""
    text = README.read_text()
    first_link = _LINK.search(text)
    assert first_link is not None and first_link.group(1) == "docs/guide/index.md"
    sections = re.findall(r"^## (.+)$", text, flags=re.M)
    assert sections[:3] == ["The two commands", "Install", "Quickstart"], sections
    assert "make demo" in text.split("## Install")[0] and "make test" in text.split("## Install")[0]
    assert "pip install whizorch\n" not in text and "not on PyPI" in text


def test_readme_quickstart_commands_are_the_guides() -> None:
    """Each command of the README's quickstart is one the guide's quickstart runs (and its test with it)."""
    quickstart = (GUIDE / "quickstart.md").read_text()
    readme_blocks = [b for b in blocks(README) if b.lang == "sh"]
    shown = [argv for b in readme_blocks for argv in commands(b.text) if argv[1] != "--version"]
    assert len(shown) >= 6
    guide = [argv for b in blocks(GUIDE / "quickstart.md") if b.lang == "sh" for argv in commands(b.text)]
    for argv in shown:
        assert argv in guide, f"README runs {argv}, which the quickstart does not"
    assert "cd examples/shop" in quickstart


def _table(page: str, first_column: str) -> dict[str, str]:
    """Rows of the markdown table whose header starts with ``first_column``: cell 1 -> cell 2."""
    text = (GUIDE / page).read_text()
    rows: dict[str, str] = {}
    inside = False
    for line in text.splitlines():
        if line.startswith(f"| {first_column} |"):
            inside = True
            continue
        if inside and line.startswith("|---"):
            continue
        if inside and line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].strip("`").rstrip("=")] = cells[1].strip("`")
        elif inside:
            break
    return rows


def test_the_step_options_table_is_the_signature() -> None:
    """writing-sagas lists every option of Saga.step with its default, and no other."""
    documented = _table("writing-sagas.md", "option")
    params = {p.name: p.default for p in inspect.signature(Saga.step).parameters.values() if p.kind is p.KEYWORD_ONLY}
    assert set(documented) == set(params), set(documented) ^ set(params)
    for name, default in params.items():
        if default is None and name == "retry":
            assert documented[name].startswith("Retry()")
        elif default == ():
            assert documented[name] == "()"
        elif default is None and name == "name":
            assert "function's name" in documented[name]
        else:
            assert documented[name] == repr(default), (name, documented[name], default)


def test_the_retry_table_is_the_class() -> None:
    """writing-sagas lists every field of Retry with its default."""
    documented = _table("writing-sagas.md", "`Retry(...)`")
    fields = {f.name: f.default for f in attrs.fields(Retry)}
    assert set(documented) == set(fields)
    for name, default in fields.items():
        if isinstance(default, tuple):
            assert documented[name] == "(" + ", ".join(c.__name__ for c in default) + ("," if len(default) == 1 else "") + ")"
        else:
            assert documented[name] == repr(default), (name, documented[name], default)


def test_the_compensate_defaults_are_the_code() -> None:
    """The compensation's defaults in writing-sagas are what a Step gets: Retry(attempts=5), the step's timeout."""
    documented = _table("writing-sagas.md", "`@step.compensate(...)`")
    def handler(ctx: StepContext, value: object) -> None:
        return None

    step = Saga("doc").step(timeout_s=7)(handler)
    assert documented["retry"].startswith("Retry(attempts=5)") and step.compensation_retry == Retry(attempts=5)
    assert documented["timeout_s"] == "the step's `timeout_s" and step.compensation_timeout_s == 7


def test_the_context_table_names_every_field() -> None:
    """writing-sagas documents every public field and property of StepContext."""
    text = (GUIDE / "writing-sagas.md").read_text()
    table = text.split("| `ctx.` | meaning |", 1)[1].split("\n\n", 1)[0]
    public = {f.name for f in attrs.fields(StepContext) if not f.name.startswith("_")} | {
        n for n, v in vars(StepContext).items() if isinstance(v, property) or (callable(v) and n == "check")
    }
    missing = {n for n in public if f"`{n}`" not in table and f"`{n}()`" not in table}
    assert not missing, f"ctx fields not in the guide's table: {sorted(missing)}"


def _exposed_metric_names() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry=registry)
    names = set()
    for family in registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ("",))
        names |= {family.name + s for s in suffixes}
    return names


def test_the_alert_rules_use_metrics_whizorch_exposes() -> None:
    """Every whizorch_* name in the example's alert rules is a metric the roles expose; promtool accepts the file when installed."""
    rules_file = ROOT / "examples" / "shop" / "alerts.yml"
    rules = yaml.safe_load(rules_file.read_text())["groups"][0]["rules"]
    exposed = _exposed_metric_names()
    used = {name for rule in rules for name in re.findall(r"\bwhizorch_\w+", rule["expr"])}
    assert used and used <= exposed, used - exposed
    promtool = shutil.which("promtool")
    if promtool is not None:
        done = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_deploying_page_keeps_the_versions_heading_for_the_versioning_change() -> None:
    """The deploying page has the 'Versions and rolling deploys' section the versioning change fills in."""
    assert "## Versions and rolling deploys" in (GUIDE / "deploying.md").read_text()


def test_run_blocks_are_dedented_python() -> None:
    """A `run` block is top-level code (not an indented fragment)."""
    for block in ALL_BLOCKS:
        if block.marker == "run":
            assert textwrap.dedent(block.text) == block.text, block
