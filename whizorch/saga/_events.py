"""What an Orchestrator reports to ``on_event``: one frozen record per kind of event.

``Orchestrator(client, app, on_event=fn)`` calls ``fn(event)`` as things happen on the
node (``fn`` must be quick and not raise; an error it raises is logged). ``event.kind``
names the event and ``event.fields()`` is its JSON form without the kind, what
``whizorch orchestrator --events`` prints as ``{"event": kind, **fields}`` (one line
each; docs/sagas.md lists them):

=====================  =============================  ====================================
kind                   record                         fields besides ``at``
=====================  =============================  ====================================
``leader``/``follower`` :class:`LeadershipChanged`    node, term, shard
``raft_leader``        :class:`RaftLeaderMoved`       node, outcome, before, after, took_s
``regions``            :class:`RegionsHealthy`        healthy
``adopted``            :class:`SagaAdopted`           saga_id, saga
``failover``           :class:`StepFailedOver`        saga_id, step, from, to, reason
``region_preference_unmet`` :class:`RegionPreferenceUnmet` saga_id, saga, step, wanted, to, reason
``finished``           :class:`SagaFinished`          saga_id, saga, status
``safe_mode``          :class:`SafeModeEntered`       node, term, silent_s
``contact_restored``   :class:`ContactRestored`       node, term, paused_s
``purged``             :class:`SagaPurged`            saga_id
``quarantined``        :class:`InputQuarantined`      what, key, reason
=====================  =============================  ====================================

``at`` is the wall-clock time (``time.time()``) the event happened.
"""

from __future__ import annotations

import time
from typing import ClassVar, Literal

import attrs

__all__ = [
    "ContactRestored",
    "EventKind",
    "InputQuarantined",
    "LeadershipChanged",
    "OrchestratorEvent",
    "RaftLeaderMoved",
    "RegionPreferenceUnmet",
    "RegionsHealthy",
    "SafeModeEntered",
    "SagaAdopted",
    "SagaFinished",
    "SagaPurged",
    "StepFailedOver",
]

EventKind = Literal[
    "leader", "follower", "raft_leader", "regions", "adopted", "failover", "region_preference_unmet", "finished",
    "safe_mode", "contact_restored", "purged", "quarantined",
]


def _now() -> float:
    return round(time.time(), 4)


@attrs.frozen(kw_only=True)
class _Event:
    KIND: ClassVar[EventKind]

    at: float = attrs.field(factory=_now)
    """When it happened (``time.time()``)."""

    @property
    def kind(self) -> EventKind:
        """The event's name (the ``event`` of its JSON line)."""
        return self.KIND

    def fields(self) -> dict[str, object]:
        """The JSON form, without the kind (tuples as lists; ``at`` last)."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.asdict(self, recurse=False).items()}
        out["at"] = out.pop("at")
        return out


@attrs.frozen(kw_only=True)
class LeadershipChanged(_Event):
    """This node started (``leader``, once its view is rebuilt) or stopped (``follower``)
    leading; ``term`` is the leadership's fencing token (0 when it stopped)."""

    leading: bool
    node: str
    term: int
    shard: int | None = None
    """The shard led (None: the whole namespace)."""

    @property
    def kind(self) -> EventKind:
        return "leader" if self.leading else "follower"

    def fields(self) -> dict[str, object]:
        return {"node": self.node, "term": self.term, "shard": self.shard, "at": self.at}


@attrs.frozen(kw_only=True)
class RaftLeaderMoved(_Event):
    """On winning: the move of etcd's Raft leadership to the home region (``outcome``
    names what happened; ``before``/``after`` are member ids)."""

    KIND = "raft_leader"
    node: str
    outcome: str
    before: int | None
    after: int | None
    took_s: float


@attrs.frozen(kw_only=True)
class RegionsHealthy(_Event):
    """The set of healthy regions changed."""

    KIND = "regions"
    healthy: tuple[str, ...]


@attrs.frozen(kw_only=True)
class SagaAdopted(_Event):
    """The leader turned a submission into a saga record."""

    KIND = "adopted"
    saga_id: str
    saga: str


@attrs.frozen(kw_only=True)
class StepFailedOver(_Event):
    """A step moved from one region to another (``reason``: why)."""

    KIND = "failover"
    saga_id: str
    step: int
    from_region: str | None
    to_region: str | None
    reason: str

    def fields(self) -> dict[str, object]:
        return {
            "saga_id": self.saga_id, "step": self.step, "from": self.from_region, "to": self.to_region,
            "reason": self.reason, "at": self.at,
        }  # fmt: skip


@attrs.frozen(kw_only=True)
class RegionPreferenceUnmet(_Event):
    """A step with a preferred region ran elsewhere (``wanted`` -> ``to``; ``reason``:
    why the router could not use the preferred one)."""

    KIND = "region_preference_unmet"
    saga_id: str
    saga: str
    step: int
    wanted: str | None
    to_region: str
    reason: str

    def fields(self) -> dict[str, object]:
        return {
            "saga_id": self.saga_id, "saga": self.saga, "step": self.step, "wanted": self.wanted, "to": self.to_region,
            "reason": self.reason, "at": self.at,
        }  # fmt: skip


@attrs.frozen(kw_only=True)
class SagaFinished(_Event):
    """A saga reached its final status (completed, compensated or failed)."""

    KIND = "finished"
    saga_id: str
    saga: str
    status: str


@attrs.frozen(kw_only=True)
class SafeModeEntered(_Event):
    """The leader heard nothing from a quorum for ``silent_s``: its writes pause."""

    KIND = "safe_mode"
    node: str
    term: int
    silent_s: float


@attrs.frozen(kw_only=True)
class ContactRestored(_Event):
    """Quorum contact is back after ``paused_s`` in safe mode."""

    KIND = "contact_restored"
    node: str
    term: int
    paused_s: float


@attrs.frozen(kw_only=True)
class SagaPurged(_Event):
    """Retention deleted a finished saga."""

    KIND = "purged"
    saga_id: str


@attrs.frozen(kw_only=True)
class InputQuarantined(_Event):
    """A key under the namespace did not decode: skipped and noted (``what``: its kind)."""

    KIND = "quarantined"
    what: str
    key: str
    reason: str


OrchestratorEvent = (
    LeadershipChanged | RaftLeaderMoved | RegionsHealthy | SagaAdopted | StepFailedOver | RegionPreferenceUnmet
    | SagaFinished | SafeModeEntered | ContactRestored | SagaPurged | InputQuarantined
)
"""Everything ``on_event`` receives."""
