"""The Orchestrator's events: typed records whose JSON form is what --events prints."""

from __future__ import annotations

import json

from whizorch.cli._main import emit_event
from whizorch.saga import (
    InputQuarantined,
    LeadershipChanged,
    RegionsHealthy,
    StepFailedOver,
)


def test_leadership_change_is_leader_or_follower() -> None:
    """LeadershipChanged is the ``leader`` or ``follower`` event, fields node, term, shard."""
    up = LeadershipChanged(leading=True, node="n1", term=7, shard=2, at=1.5)
    down = LeadershipChanged(leading=False, node="n1", term=0, shard=2, at=2.0)
    assert (up.kind, down.kind) == ("leader", "follower")
    assert up.fields() == {"node": "n1", "term": 7, "shard": 2, "at": 1.5}


def test_failover_keeps_its_json_names() -> None:
    """A failover's JSON says ``from``/``to`` (attributes from_region/to_region)."""
    ev = StepFailedOver(saga_id="s", step=1, from_region="eu", to_region="us", reason="region_down", at=3.0)
    assert ev.kind == "failover"
    assert ev.fields() == {"saga_id": "s", "step": 1, "from": "eu", "to": "us", "reason": "region_down", "at": 3.0}


def test_every_record_has_a_time_and_json_fields() -> None:
    """``at`` defaults to now; tuples become lists; ``at`` comes last."""
    ev = RegionsHealthy(healthy=("eu", "us"))
    assert ev.kind == "regions" and ev.at > 0
    assert list(ev.fields()) == ["healthy", "at"] and ev.fields()["healthy"] == ["eu", "us"]
    assert InputQuarantined(what="run", key="k", reason="bad", at=1.0).fields() == {
        "what": "run", "key": "k", "reason": "bad", "at": 1.0,
    }


def test_cli_prints_an_event_as_one_json_line(capsys: object) -> None:
    """``--events`` prints ``{"event": kind, **fields}`` per event."""
    import pytest

    assert isinstance(capsys, pytest.CaptureFixture)
    emit_event(LeadershipChanged(leading=True, node="n1", term=3, shard=0, at=1.0))
    line = capsys.readouterr().out
    assert json.loads(line) == {"event": "leader", "node": "n1", "term": 3, "shard": 0, "at": 1.0}
    assert line.count("\n") == 1
