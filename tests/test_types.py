"""Compare/Op builders, key encoding and prefix ranges (no etcd needed)."""

from __future__ import annotations

import pytest

from whizorch import Compare, ConfigError, Op
from whizorch.etcd import prefix_end
from whizorch.etcd._proto import rpc_pb2
from whizorch.etcd._types import range_request, txn_request


def test_prefix_end_increments_last_byte() -> None:
    """prefix_end gives the first key after every key with the prefix."""
    assert prefix_end(b"a/") == b"a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


def test_compare_zero_revision_is_sent() -> None:
    """create_revision == 0 (create-if-absent) survives serialisation: the oneof is set even at 0."""
    c = Compare.create_revision("k", "==", 0)
    parsed = rpc_pb2.Compare.FromString(c._pb.SerializeToString())
    assert parsed.WhichOneof("target_union") == "create_revision"
    assert parsed.target == rpc_pb2.Compare.CREATE
    assert parsed.result == rpc_pb2.Compare.EQUAL


@pytest.mark.parametrize(
    "build,target",
    [
        (lambda: Compare.mod_revision("k", "<", 3), rpc_pb2.Compare.MOD),
        (lambda: Compare.version("k", ">", 1), rpc_pb2.Compare.VERSION),
        (lambda: Compare.value("k", "!=", "v"), rpc_pb2.Compare.VALUE),
        (lambda: Compare.lease("k", "==", 7), rpc_pb2.Compare.LEASE),
    ],
)
def test_compare_targets(build, target) -> None:  # type: ignore[no-untyped-def]
    """Each Compare constructor sets the matching target enum."""
    assert build()._pb.target == target


def test_compare_rejects_bad_operator_and_revision() -> None:
    """Bad operators and negative revisions are ConfigErrors naming the field."""
    with pytest.raises(ConfigError, match="op"):
        Compare.mod_revision("k", "=", 1)
    with pytest.raises(ConfigError, match="revision"):
        Compare.mod_revision("k", "==", -1)
    with pytest.raises(ConfigError, match="revision"):
        Compare.mod_revision("k", "==", True)


def test_empty_and_wrong_type_keys_are_rejected() -> None:
    """Empty keys and non-str/bytes keys raise ConfigError (also a ValueError)."""
    with pytest.raises(ConfigError, match="empty"):
        Op.put("", "v")
    with pytest.raises(ValueError, match="key must be str or bytes"):
        Op.put(123, "v")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="value must be str or bytes"):
        Op.put("k", 1.5)  # type: ignore[arg-type]


def test_op_is_read_looks_into_nested_txns() -> None:
    """A txn op counts as a read only when every nested op reads."""
    assert Op.get("a").is_read
    assert not Op.put("a", "b").is_read
    assert Op.txn([], [Op.get("a")], [Op.get("b")]).is_read
    assert not Op.txn([], [Op.get("a")], [Op.delete("b")]).is_read


def test_range_prefix_and_sort() -> None:
    """A prefix read sets range_end and the sort options."""
    r = range_request("p/", prefix=True, sort_target="create", sort_order="descend", limit=1)
    assert (r.key, r.range_end, r.limit) == (b"p/", b"p0", 1)
    assert r.sort_target == rpc_pb2.RangeRequest.CREATE
    assert r.sort_order == rpc_pb2.RangeRequest.DESCEND


def test_txn_rejects_non_ops() -> None:
    """txn branches must hold Op objects; the error names the branch."""
    with pytest.raises(ConfigError, match="success"):
        txn_request([], ["put"], [])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="compare"):
        txn_request(["x"], [], [])  # type: ignore[list-item]
