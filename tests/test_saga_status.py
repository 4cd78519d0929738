"""saga/_status.py: the leader parsed from the election keys, one function for both layouts."""

from __future__ import annotations

from whizorch.etcd import KeyValue
from whizorch.saga._keys import Keys
from whizorch.saga._status import leader_summary, leaders_of


def _kv(key: str, node: str, rev: int, lease: int) -> KeyValue:
    return KeyValue(key.encode(), node.encode(), rev, rev, 1, lease)


def test_one_election_the_lowest_create_revision_leads() -> None:
    """<ns>/leader/<lease>: the candidate created first leads; its create revision is the term."""
    kvs = [_kv("ns/leader/2b", "orch-2", 12, 0x2B), _kv("ns/leader/1a", "orch-1", 7, 0x1A)]
    assert leaders_of(kvs, Keys("ns")) == [
        {"shard": None, "node": "orch-1", "term": 7, "lease": "1a", "key": "ns/leader/1a", "candidates": 2}
    ]
    assert leader_summary(kvs) == {"node": "orch-1", "term": 7, "lease": "1a", "key": "ns/leader/1a"}
    assert leader_summary([]) is None


def test_sharded_elections_give_a_leader_per_shard() -> None:
    """<ns>/leader/<shard>/<lease>: one leader per shard, each with its own candidates and term."""
    kvs = [
        _kv("ns/leader/0/1a", "orch-1", 7, 0x1A), _kv("ns/leader/1/2b", "orch-2", 8, 0x2B),
        _kv("ns/leader/0/3c", "orch-3", 9, 0x3C),
    ]  # fmt: skip
    found = leaders_of(kvs, Keys("ns"))
    assert [(d["shard"], d["node"], d["term"], d["candidates"]) for d in found] == [("0", "orch-1", 7, 2), ("1", "orch-2", 8, 1)]
