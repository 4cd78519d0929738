"""Leader locality's pure parts: which home member may take etcd's Raft leadership, the
MoveLeader wire messages and error translation, and bring_raft_leader's promises (never
raises on etcd trouble, cheap when a home member leads) over a stand-in adapter."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import descriptor_pb2
from hypothesis import given
from hypothesis import strategies as st

from whizorch.errors import ConfigError, EtcdError, EtcdUnavailableError, WhizorchError
from whizorch.etcd import Status
from whizorch.etcd._errors import is_not_leader, is_safe_to_retry, translate
from whizorch.etcd._methods import METHODS
from whizorch.etcd._proto import rpc_pb2
from whizorch.saga._locality import (
    MAX_RAFT_LAG,
    LocalityOutcome,
    bring_raft_leader,
    choose_target,
)
from whizorch.testing import eventually_async

LEADER, HOME_A, HOME_B = 0xA1, 0xB2, 0xC3


def status(
    member: int,
    *,
    leader: int = LEADER,
    index: int = 1000,
    term: int = 4,
    errors: tuple[str, ...] = (),
    endpoint: str | None = None,
) -> Status:
    return Status(
        endpoint=endpoint or f"127.0.0.1:{member}",
        version="3.5.1",
        db_size=1,
        leader=leader,
        member_id=member,
        raft_index=index,
        raft_term=term,
        revision=1,
        errors=errors,
    )


THE_LEADER = status(LEADER, index=1000)

# -- choosing the target ---------------------------------------------------------------


def test_a_healthy_caught_up_home_member_is_chosen() -> None:
    """A home member that follows the leader in its term and is caught up is the target."""
    choice = choose_target(THE_LEADER, [status(HOME_A, index=990)])
    assert choice.target is not None and choice.target.member_id == HOME_A


def test_a_home_member_that_leads_is_returned_as_is() -> None:
    """When the leader is among the home members it is the choice (nothing to move)."""
    choice = choose_target(THE_LEADER, [status(HOME_A), THE_LEADER])
    assert choice.target == THE_LEADER and "leads already" in choice.reason


def test_a_member_behind_by_more_than_the_margin_is_refused() -> None:
    """A member whose committed index trails the leader's by more than max_lag may not lead."""
    behind = status(HOME_A, index=1000 - 501)
    choice = choose_target(THE_LEADER, [behind], max_lag=500)
    assert choice.target is None and "501 entries behind" in choice.reason
    assert choose_target(THE_LEADER, [status(HOME_A, index=500)], max_lag=500).target is not None


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (status(HOME_A, errors=("NOSPACE alarm",)), "reports errors: NOSPACE alarm"),
        (status(HOME_A, leader=0), "does not follow the leader"),
        (status(HOME_A, leader=HOME_B), "does not follow the leader"),
        (status(HOME_A, term=3), "does not follow the leader"),
        (EtcdUnavailableError("etcd unavailable: connection refused"), "unreachable"),
    ],
)
def test_an_unhealthy_member_is_refused_with_the_reason(member: Status | WhizorchError, why: str) -> None:
    """Errors reported, no leader or another one, an old term, no answer: never a target."""
    choice = choose_target(THE_LEADER, [member])
    assert choice.target is None
    assert why in choice.reason


def test_the_most_caught_up_wins_and_near_ties_keep_the_list_order() -> None:
    """Among fit members the most caught up leads; within a tenth of the margin the first listed."""
    first, second = status(HOME_A, index=700), status(HOME_B, index=990)
    assert choose_target(THE_LEADER, [first, second]).target == second
    near = status(HOME_A, index=985)
    assert choose_target(THE_LEADER, [near, second]).target == near


def test_no_home_members_is_no_candidate() -> None:
    """An empty home list says so instead of choosing anyone."""
    choice = choose_target(THE_LEADER, [])
    assert choice.target is None and "none configured" in choice.reason


member_statuses = st.builds(
    status,
    st.sampled_from([HOME_A, HOME_B, 0xD4]),
    leader=st.sampled_from([LEADER, LEADER, 0, HOME_B]),
    index=st.integers(0, 3000),
    term=st.sampled_from([4, 4, 3]),
    errors=st.sampled_from([(), (), ("corrupt",)]),
)


@given(st.lists(member_statuses, max_size=4), st.integers(0, 2000))
def test_a_chosen_target_is_always_fit_and_none_fit_is_well_ahead(
    home: list[Status], max_lag: int
) -> None:
    """Property: the target follows the leader, has no errors, is within max_lag; no fit
    member is ahead of it by a tenth of the margin or more."""
    choice = choose_target(THE_LEADER, home, max_lag=max_lag)
    fit = [
        s
        for s in home
        if not s.errors
        and s.leader == LEADER
        and s.raft_term == THE_LEADER.raft_term
        and THE_LEADER.raft_index - s.raft_index <= max_lag
    ]
    if not fit:
        assert choice.target is None and choice.reason
        return
    assert choice.target in fit
    assert all(s.raft_index - choice.target.raft_index < max(1, max_lag // 10) for s in fit)


# -- the MoveLeader wire messages and errors -------------------------------------------


def test_move_leader_messages_keep_etcds_field_numbers() -> None:
    """MoveLeaderRequest targetID = 1 (uint64), MoveLeaderResponse header = 1."""
    fdp = descriptor_pb2.FieldDescriptorProto
    request = {f.name: (f.number, f.type) for f in rpc_pb2.MoveLeaderRequest.DESCRIPTOR.fields}
    response = {f.name: (f.number, f.type) for f in rpc_pb2.MoveLeaderResponse.DESCRIPTOR.fields}
    assert request == {"targetID": (1, fdp.TYPE_UINT64)}
    assert response == {"header": (1, fdp.TYPE_MESSAGE)}
    # targetID = 1, varint 0xdeadbeef
    assert rpc_pb2.MoveLeaderRequest(targetID=0xDEADBEEF).SerializeToString() == b"\x08\xef\xfd\xb6\xf5\x0d"
    method = METHODS["MoveLeader"]
    assert method.path == "/etcdserverpb.Maintenance/MoveLeader" and not method.streaming


def _translate(code: grpc.StatusCode, details: str) -> WhizorchError:
    exc = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)
    return translate(exc, endpoint="127.0.0.1:2379", write=False, method=METHODS["MoveLeader"].path)


def test_a_bad_transferee_is_a_config_error() -> None:
    """etcd's 'bad leader transferee' (not a voting member) is a ConfigError, not retried."""
    err = _translate(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: bad leader transferee")
    assert isinstance(err, ConfigError) and isinstance(err, ValueError)
    assert not is_safe_to_retry(err) and not is_not_leader(err)


def test_not_leader_is_retryable_and_recognised() -> None:
    """'not leader' (MoveLeader reached a follower) never took effect: retry at the leader."""
    err = _translate(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: not leader")
    assert isinstance(err, EtcdUnavailableError)
    assert is_not_leader(err) and is_safe_to_retry(err)
    other = _translate(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
    assert not is_not_leader(other)


# -- bring_raft_leader over a stand-in adapter -----------------------------------------


class StandIn:
    """The four adapter calls bring_raft_leader makes, answered from a table."""

    def __init__(self, statuses: dict[str, Status | WhizorchError], leader: Status | WhizorchError) -> None:
        self.statuses = statuses
        self.leader = leader
        self.calls: list[str] = []

    async def status(self, endpoint: str, *, timeout_s: float | None = None) -> Status:
        self.calls.append(f"status {endpoint}")
        answer = self.statuses[endpoint]
        if isinstance(answer, WhizorchError):
            raise answer
        return answer

    async def leader_status(self, *, timeout_s: float | None = None) -> Status:
        self.calls.append("leader_status")
        if isinstance(self.leader, WhizorchError):
            raise self.leader
        return self.leader

    async def move_leader(self, target: int, *, timeout_s: float | None = None) -> None:
        self.calls.append(f"move_leader {target:x}")
        for endpoint, s in list(self.statuses.items()):
            if isinstance(s, Status):
                self.statuses[endpoint] = status(s.member_id, leader=target, endpoint=endpoint)


HOME = "127.0.0.1:1001"


async def test_a_home_leader_costs_one_status_call() -> None:
    """When the home member leads, one status call to it is all the call does."""
    client: Any = StandIn({HOME: status(HOME_A, leader=HOME_A, endpoint=HOME)}, THE_LEADER)
    result = await bring_raft_leader(client, [HOME], timeout_s=1)
    assert result.outcome is LocalityOutcome.HOME and result.home_leads and not result.moved
    assert client.calls == [f"status {HOME}"]
    assert result.leader_before == result.leader_after == HOME_A


async def test_a_far_leader_is_moved_home_and_reported() -> None:
    """A fit home member is asked to lead; the result names before, after and target."""
    client: Any = StandIn({HOME: status(HOME_A, index=999, endpoint=HOME)}, THE_LEADER)
    result = await bring_raft_leader(client, [f"http://{HOME}"], timeout_s=1)
    assert result.outcome is LocalityOutcome.MOVED and result.moved
    assert (result.leader_before, result.target, result.leader_after) == (LEADER, HOME_A, HOME_A)
    assert f"move_leader {HOME_A:x}" in client.calls and result.took_s >= 0


async def test_a_lagging_home_member_is_left_alone() -> None:
    """A home member too far behind is not asked to lead: NO_CANDIDATE, no move."""
    client: Any = StandIn({HOME: status(HOME_A, index=1000 - MAX_RAFT_LAG - 1, endpoint=HOME)}, THE_LEADER)
    result = await bring_raft_leader(client, [HOME], timeout_s=1)
    assert result.outcome is LocalityOutcome.NO_CANDIDATE and "behind" in result.reason
    assert not any(c.startswith("move_leader") for c in client.calls)


@pytest.mark.parametrize(
    "trouble",
    [
        EtcdUnavailableError("etcd has no Raft leader now"),
        EtcdError("etcd error: something else"),
        ConfigError("cannot move etcd's leadership to b2: it is a learner"),
    ],
)
async def test_etcd_trouble_is_reported_not_raised(trouble: WhizorchError) -> None:
    """Whatever etcd answers, the call returns FAILED with the reason instead of raising."""
    client: Any = StandIn({HOME: status(HOME_A, endpoint=HOME)}, trouble)
    result = await bring_raft_leader(client, [HOME], timeout_s=1)
    assert result.outcome is LocalityOutcome.FAILED and str(trouble) in result.reason


async def test_arguments_are_checked_and_no_home_is_no_candidate() -> None:
    """Bad timeout or margin are ConfigErrors; an empty home list does nothing."""
    client: Any = StandIn({}, THE_LEADER)
    with pytest.raises(ConfigError):
        await bring_raft_leader(client, [HOME], timeout_s=0)
    with pytest.raises(ConfigError):
        await bring_raft_leader(client, [HOME], timeout_s=1, max_lag=-1)
    result = await bring_raft_leader(client, [], timeout_s=1)
    assert result.outcome is LocalityOutcome.NO_CANDIDATE and client.calls == []


class Hanging(StandIn):
    """A stand-in whose leader never answers."""

    async def leader_status(self, *, timeout_s: float | None = None) -> Status:
        self.calls.append("leader_status")
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_call_past_its_timeout_is_failed_not_raised() -> None:
    """An etcd that never answers ends the call at timeout_s with FAILED."""
    client: Any = Hanging({HOME: status(HOME_A, endpoint=HOME)}, THE_LEADER)
    result = await bring_raft_leader(client, [HOME], timeout_s=0.05)
    assert result.outcome is LocalityOutcome.FAILED and "not done within 0.05s" in result.reason


async def test_cancelling_the_call_propagates_and_leaves_no_task() -> None:
    """Cancelled mid-call, bring_raft_leader re-raises CancelledError and leaves nothing running."""
    client: Any = Hanging({HOME: status(HOME_A, endpoint=HOME)}, THE_LEADER)
    before = asyncio.all_tasks()
    task = asyncio.ensure_future(bring_raft_leader(client, [HOME], timeout_s=10))
    await eventually_async(lambda: "leader_status" in client.calls, timeout=2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert asyncio.all_tasks() == before
