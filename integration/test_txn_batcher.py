"""TxnBatcher against real etcd: concurrent guarded txns share one etcd txn, each kept
apart as a nested txn (a conflict on one never fails the others), within etcd's op
and size limits, under an outer compare that guards them all."""

from __future__ import annotations

import asyncio

import pytest

from whizorch import EtcdClient
from whizorch.errors import ConfigError, RequestTooLargeError
from whizorch.etcd import BatchRefused, Compare, Op, PutResult, RangeResult, TxnBatcher


class Counting:
    """The client's txn calls, counted (the real client underneath)."""

    def __init__(self, client: EtcdClient) -> None:
        self.client = client
        self.calls = 0
        self.txn_sizes: list[int] = []

    def install(self) -> None:
        real = self.client.txn

        async def txn(compare, success=(), failure=(), **kw):  # type: ignore[no-untyped-def]
            self.calls += 1
            self.txn_sizes.append(len(success))
            return await real(compare, success, failure, **kw)

        self.client.txn = txn  # type: ignore[method-assign]


async def test_a_conflict_on_one_item_fails_only_that_item(client: EtcdClient, prefix: str) -> None:
    """Ten writers, one of whose compares fails: the nine commit, the tenth gets its own
    failure branch (its read), all in fewer etcd txns than writers."""
    keys = [f"{prefix}k{i}".encode() for i in range(10)]
    await client.put(keys[3], b"taken")
    counting = Counting(client)
    counting.install()
    batcher = TxnBatcher(client)
    results = await asyncio.gather(*(
        batcher.txn([Compare.create_revision(k, "==", 0)], [Op.put(k, b"mine")], [Op.get(k)]) for k in keys
    ))
    assert [r.succeeded for r in results] == [i != 3 for i in range(10)]
    refused = results[3].responses[0]
    assert isinstance(refused, RangeResult) and refused.kvs[0].value == b"taken"
    assert all(isinstance(r.responses[0], PutResult) for i, r in enumerate(results) if i != 3)
    got = await client.get(prefix, prefix=True)
    assert {kv.key: kv.value for kv in got.kvs} == {k: b"taken" if i == 3 else b"mine" for i, k in enumerate(keys)}
    # the first went alone (nothing else was waiting), the other nine together
    assert counting.calls == 2 and batcher.batches == 2 and counting.txn_sizes[1] == 9
    assert len({r.header.revision for r in results[1:]}) == 1


async def test_more_items_than_etcds_op_limit_go_in_several_txns(client: EtcdClient, prefix: str) -> None:
    """300 writers of 2 ops each, max_items=127: every one commits, no txn is refused
    by etcd's --max-txn-ops (default 128; nested txns share its budget: n + 2 <= 128)."""
    counting = Counting(client)
    counting.install()
    batcher = TxnBatcher(client, max_items=127)
    keys = [f"{prefix}n{i:03}".encode() for i in range(300)]
    results = await asyncio.gather(*(
        batcher.txn([Compare.create_revision(k, "==", 0)], [Op.put(k, b"v"), Op.put(k + b"/extra", b"w")]) for k in keys
    ))
    assert all(r.succeeded for r in results)
    assert (await client.get(prefix, prefix=True, count_only=True)).count == 600
    # one alone (nothing else waited), then as many as the budget allows: 126 + 2 = 128
    assert counting.txn_sizes[:3] == [2, 126, 126] and sum(counting.txn_sizes[1:]) == 299


async def test_an_item_etcd_refuses_is_split_out(client: EtcdClient, prefix: str) -> None:
    """One writer's txn over etcd's request size limit: only that writer sees
    RequestTooLargeError; the others, batched with it at first, commit."""
    batcher = TxnBatcher(client, max_bytes=4 * 1024 * 1024)
    big = b"x" * (client.config.max_request_bytes + 1024)
    first = asyncio.ensure_future(batcher.txn([], [Op.put(f"{prefix}first".encode(), b"1")]))
    await asyncio.sleep(0)  # ok: the first goes out alone; the rest queue behind it
    rest = [
        asyncio.ensure_future(batcher.txn([], [Op.put(f"{prefix}big".encode(), big)])),
        *(asyncio.ensure_future(batcher.txn([], [Op.put(f"{prefix}s{i}".encode(), b"v")])) for i in range(5)),
    ]
    await first
    outcomes = await asyncio.gather(*rest, return_exceptions=True)
    assert isinstance(outcomes[0], RequestTooLargeError)
    assert all(not isinstance(o, BaseException) and o.succeeded for o in outcomes[1:])
    assert (await client.get(f"{prefix}s", prefix=True, count_only=True)).count == 5
    assert not (await client.get(f"{prefix}big")).kvs


async def test_an_item_on_a_lease_etcd_does_not_know_is_split_out(client: EtcdClient, prefix: str) -> None:
    """A put on a lease that has expired fails the whole etcd txn: split, only its
    writer sees the error."""
    lease = await client.lease_grant(30)
    await client.lease_revoke(lease.id)
    batcher = TxnBatcher(client)
    first = asyncio.ensure_future(batcher.txn([], [Op.put(f"{prefix}first".encode(), b"1")]))
    await asyncio.sleep(0)  # ok: the first goes out alone; the rest queue behind it
    rest = [
        asyncio.ensure_future(batcher.txn([], [Op.put(f"{prefix}dead".encode(), b"v", lease=lease.id)])),
        *(asyncio.ensure_future(batcher.txn([], [Op.put(f"{prefix}ok{i}".encode(), b"v")])) for i in range(3)),
    ]
    await first
    outcomes = await asyncio.gather(*rest, return_exceptions=True)
    assert isinstance(outcomes[0], Exception) and not isinstance(outcomes[0], BatchRefused)
    assert all(not isinstance(o, BaseException) and o.succeeded for o in outcomes[1:])


async def test_the_outer_compare_guards_every_item(client: EtcdClient, prefix: str) -> None:
    """The outer compare (a leader's fence) failing refuses every item of the batch,
    and nothing is written."""
    fence = f"{prefix}fence".encode()
    await client.put(fence, b"old")
    batcher = TxnBatcher(
        client, outer_compare=lambda: [Compare.value(fence, "==", b"mine")], outer_failure=lambda: [Op.get(fence)]
    )
    outcomes = await asyncio.gather(
        *(batcher.txn([], [Op.put(f"{prefix}w{i}".encode(), b"v")]) for i in range(4)), return_exceptions=True
    )
    assert all(isinstance(o, BatchRefused) for o in outcomes)
    held = outcomes[0].result.responses[0]  # type: ignore[union-attr]
    assert isinstance(held, RangeResult) and held.kvs[0].value == b"old"
    assert (await client.get(f"{prefix}w", prefix=True, count_only=True)).count == 0


def test_limits_are_checked() -> None:
    """max_items beyond etcd's op limit, or no room in flight, is a ConfigError."""
    with pytest.raises(ConfigError, match="max_items"):
        TxnBatcher(EtcdClient(["127.0.0.1:1"]), max_items=128)
    with pytest.raises(ConfigError, match="max_in_flight"):
        TxnBatcher(EtcdClient(["127.0.0.1:1"]), max_in_flight=0)
