"""The pure half of sharding: which shard a saga is in, and which orchestrator leads it."""

from __future__ import annotations

import itertools
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from whizorch.saga._keys import Keys
from whizorch.saga._shards import Member, ShardBoard, assign, members_from, shard_of

NODES = st.lists(st.text("abcdefgh0123456789-", min_size=1, max_size=8), min_size=1, max_size=9, unique=True)


def members(names: list[str]) -> list[Member]:
    return [Member(n, f"{i:x}") for i, n in enumerate(names)]


def test_shard_of_is_stable_and_spreads() -> None:
    """The same id is always in the same shard; 4,000 ids spread over 8 shards evenly
    (each within 20% of the mean)."""
    assert shard_of("order-42", 8) == shard_of("order-42", 8)
    counts = Counter(shard_of(f"order-{i}", 8) for i in range(4000))
    assert set(counts) == set(range(8)) and all(400 <= n <= 600 for n in counts.values()), counts
    assert {shard_of(f"x{i}", 1) for i in range(100)} == {0}


@given(NODES, st.integers(1, 64))
def test_every_shard_has_one_owner_and_shares_are_even(names: list[str], shards: int) -> None:
    """Every shard goes to exactly one member; shares differ by at most one, and the
    answer does not depend on the order the members are listed in."""
    people = members(names)
    owners = assign(shards, people)
    assert sorted(owners) == list(range(shards))
    share = Counter(owners.values())
    counts = [share.get(m, 0) for m in people]
    assert max(counts) - min(counts) <= 1
    assert assign(shards, list(reversed(people))) == owners
    assert assign(shards, {m.lease: m for m in people}) == owners


@given(NODES.filter(lambda n: len(n) >= 2), st.integers(4, 64))
def test_a_member_leaving_hands_over_its_shards(names: list[str], shards: int) -> None:
    """When one member leaves, every shard it led goes to another member."""
    people = members(names)
    before = assign(shards, people)
    gone = people[-1]
    after = assign(shards, people[:-1])
    assert all(after[k] != gone for k in range(shards))
    assert {k for k in range(shards) if before[k] == gone} <= {k for k in range(shards) if before[k] != after[k]}


def test_joins_and_leaves_move_few_shards_beyond_their_share() -> None:
    """Over 200 deployments (2-6 members, 4-32 shards), a join or a leave moves the
    joiner's or leaver's share and, on average, under 1.5 shards more (the quotas
    rebalance): a deterministic sample, so the figure is the same on every run."""
    extra = []
    for case in range(200):
        n, shards = 2 + case % 5, (4, 8, 16, 32)[case % 4]
        people = [Member(f"node-{case}-{i}", f"{i:x}") for i in range(n)]
        full, less = assign(shards, people), assign(shards, people[:-1])
        moved = sum(1 for k in range(shards) if full[k] != less[k])
        share = sum(1 for k in range(shards) if full[k] == people[-1])
        extra.append(moved - share)
    assert min(extra) >= 0 and sum(extra) / len(extra) < 1.5, sum(extra) / len(extra)


def test_no_members_no_owners() -> None:
    """Nobody to lead: no assignment."""
    assert assign(8, []) == {}


def test_one_orchestrator_leads_every_shard_and_two_split_them() -> None:
    """One member gets all 8 shards; two get 4 each; three get 3, 3 and 2."""
    a, b, c = members(["a", "b", "c"])
    assert set(assign(8, [a]).values()) == {a}
    assert sorted(Counter(assign(8, [a, b]).values()).values()) == [4, 4]
    assert sorted(Counter(assign(8, [a, b, c]).values()).values()) == [2, 3, 3]


def test_members_from_keys() -> None:
    """Membership keys give (node, lease); a value that does not parse counts by its lease."""
    keys = Keys("ns")
    got = members_from([(b"ns/orch/1a", b'{"node": "n1"}'), (b"ns/orch/2b", b"nope")], keys)
    assert got == {"1a": Member("n1", "1a"), "2b": Member("2b", "2b")}


def test_assignment_is_deterministic_across_calls() -> None:
    """The same members and shard count give the same owners on every call (every node
    computes it on its own)."""
    people = members(["n1", "n2", "n3", "n4"])
    answers = {tuple(sorted((k, m.node) for k, m in assign(16, list(p)).items())) for p in itertools.permutations(people)}
    assert len(answers) == 1


def test_a_member_holding_more_than_its_share_gives_back_its_newest_shards() -> None:
    """After orch-2 (shards 0, 2, 4) died, orch-1's view can show it holding 0 and 4
    already (queued while its watch of members lagged its watch of elections): it keeps
    1, 3, 7, which it led before, and gives back the newest (seen on the region lab:
    without the revisions it gave back 7)."""
    o1, o3 = Member("orch-1", "a"), Member("orch-3", "b")
    held = {1: "a", 3: "a", 7: "a", 5: "b", 6: "b", 0: "a", 4: "a"}
    since = {1: 10, 3: 11, 7: 12, 5: 13, 6: 14, 0: 100, 4: 101}
    owners = assign(8, [o1, o3], held, since=since)
    assert sorted(k for k, m in owners.items() if m == o1) == [0, 1, 3, 7]
    assert sorted(k for k, m in owners.items() if m == o3) == [2, 4, 5, 6]
    assert assign(8, [o1, o3], held)[7] == o3  # by shard number alone, 7 would move


@given(NODES.filter(lambda n: len(n) >= 3), st.integers(3, 32), st.data())
def test_after_a_leave_no_survivor_gives_up_a_shard_it_led_in_any_view_a_node_can_have(
    names: list[str], shards: int, data: st.DataObject
) -> None:
    """A member dies: whatever a survivor's view shows at that moment (the dead one still a
    member or not; each of its shards still its own, free, or already won or queued for by
    a survivor, with a newer revision), every shard a survivor led stays with it."""
    people = members(names)
    settled = assign(shards, people)
    gone = data.draw(st.sampled_from(people))
    survivors = [m for m in people if m != gone]
    current = {k: m.lease for k, m in settled.items()}
    since = {k: k + 1 for k in settled}
    for k in [k for k, m in settled.items() if m == gone]:
        state = data.draw(st.sampled_from(["dead", "free", *survivors]))
        if state == "free":
            del current[k], since[k]
        elif isinstance(state, Member):
            current[k], since[k] = state.lease, 1000 + k
    view = people if data.draw(st.booleans()) else survivors
    owners = assign(shards, view, current, since=since)
    assert all(owners[k] == m for k, m in settled.items() if m != gone), (settled, current, owners)


def test_the_board_names_the_shards_whose_election_holds_a_leases_key() -> None:
    """``held`` finds a lease's keys, leading or queued, and forgets a deleted one: what
    the orchestrator withdraws from the elections it does not campaign in."""
    keys = Keys("ns")
    board = ShardBoard(keys, 4)
    board.candidate(b"ns/leader/0/a1", 10)
    board.candidate(b"ns/leader/1/b2", 11)
    board.candidate(b"ns/leader/1/a1", 12)  # queued behind b2
    board.candidate(b"ns/leader/3/a10", 13)  # another lease whose hex starts the same
    assert board.held("a1") == {0, 1}
    assert board.held("b2") == {1}
    board.candidate(b"ns/leader/1/a1", None)
    assert board.held("a1") == {0}
    assert board.held("ff") == set()
