"""``whizorch roles show`` and the argument checks of ``roles apply`` (no etcd needed)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from whizorch.cli import main


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["roles", *args], env={"WHIZORCH_CONFIG": None})
    return result.exit_code, result.stdout, result.stderr


def test_show_prints_every_role_with_its_prefixes() -> None:
    """The table names each role and its permissions under the given namespace."""
    code, out, _ = _run("show", "--regions", "eu,us", "--namespace", "ws")
    assert code == 0
    for text in ("ws-worker-eu", "ws-worker-us", "ws-orchestrator", "ws-client", "ws-viewer", "ws/task/eu/", "ws/region/us/"):
        assert text in out


def test_show_json_is_the_definition() -> None:
    """--json prints one document: role, kind, region and permissions per role."""
    code, out, _ = _run("show", "--regions", "eu", "--json")
    assert code == 0
    doc = json.loads(out)
    worker = next(r for r in doc if r["kind"] == "worker")
    assert worker == {
        "role": "whizorch-worker-eu",
        "kind": "worker",
        "region": "eu",
        "permissions": [
            {"type": "READWRITE", "prefix": "whizorch/task/eu/"},
            {"type": "READWRITE", "prefix": "whizorch/run/eu/"},
            {"type": "READ", "prefix": "whizorch/run/"},
            {"type": "READWRITE", "prefix": "whizorch/region/eu/"},
        ],
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("show", "--regions", "eu,,us"), "non-empty"),
        (("show", "--regions", "eu/west"), "contains '/'"),
        (("show", "--regions", "eu,eu"), "named twice"),
        (("show",), "name the regions with --regions"),
        (("apply", "--regions", "eu", "--users"), "exactly one of --password-from-env VAR and --no-password"),
        (("apply", "--regions", "eu", "--no-password"), "only apply with --users"),
        (("apply", "--regions", "eu", "--users", "--password-from-env", "WHIZORCH_TEST_UNSET_VAR"), "unset or empty"),
        (("apply", "--bogus"), "No such option '--bogus'"),
    ],
)
def test_bad_input_exits_2_naming_what_is_wrong(args: tuple[str, ...], message: str) -> None:
    """Bad regions and option combinations end with exit 2 and a line saying what was wrong, before any etcd call."""
    code, _, err = _run(*args)
    assert code == 2
    assert message in err
