"""SagaClient.list_page on real etcd: pages in id order with pending submissions merged,
filters that read on until enough match, the scan bound, and bad cursors refused."""

from __future__ import annotations

import pytest

from whizorch import EtcdClient
from whizorch.errors import ConfigError
from whizorch.etcd import Op
from whizorch.saga import SagaClient, SagaRecord, StepState
from whizorch.saga._keys import Keys
from whizorch.saga._model import encode_json


def record(sid: str, status: str, saga: str = "trip") -> bytes:
    """A real saga record (as the leader writes it) of one step."""
    return SagaRecord(
        id=sid, saga=saga, txid=1, status=status, steps=[StepState(name="a", state="done")], created=1.0, updated=2.0
    ).to_json()


async def seed(client: EtcdClient, ns: str) -> None:
    """Records s00..s19 (every 5th compensated, the rest completed; s07 of type geo), their
    submissions, and pending submissions p05 and s10x with no record."""
    keys = Keys(ns)
    ops = []
    for i in range(20):
        sid = f"s{i:02d}"
        status = "compensated" if i % 5 == 0 else "completed"
        ops.append(Op.put(keys.saga(sid), record(sid, status, "geo" if i == 7 else "trip")))
        ops.append(Op.put(keys.submit(sid), encode_json({"saga": "trip", "input": None}, what="s")))
    for sid in ("p05", "s10x"):
        ops.append(Op.put(keys.submit(sid), encode_json({"saga": "trip", "input": None, "submitted": 3.0}, what="s")))
    await client.txn([], ops)


@pytest.fixture
async def sagas(client: EtcdClient, prefix: str) -> SagaClient:
    """A SagaClient on a namespace holding the seeded sagas."""
    ns = prefix + "ns"
    await seed(client, ns)
    return SagaClient(client, namespace=ns)


async def test_pages_walk_every_saga_once_in_id_order_with_pending(sagas: SagaClient) -> None:
    """Pages of 6 give all 22 sagas (records and pending submissions) in id order, once each."""
    seen, after, pages = [], None, 0
    while True:
        page = await sagas.list_page(limit=6, after=after)
        pages += 1
        seen += [(s.saga_id, s.status) for s in page.sagas]
        assert len(page.sagas) == (6 if page.next_after else len(page.sagas))
        if page.next_after is None:
            break
        after = page.next_after
    ids = [sid for sid, _ in seen]
    assert ids == sorted(ids) and len(ids) == 22 == len(set(ids)) and pages == 4
    assert dict(seen)["p05"] == dict(seen)["s10x"] == "pending"
    assert dict(seen)["s05"] == "compensated"


async def test_a_filter_reads_on_until_enough_match_and_counts_what_it_scanned(sagas: SagaClient) -> None:
    """--status compensated, 2 per page: s00, s05 (scanning s01..s04 too; submissions are
    not read, as no pending saga can match), then s10, s15, and the end."""
    first = await sagas.list_page(limit=2, status="compensated")
    assert [s.saga_id for s in first.sagas] == ["s00", "s05"]
    assert (first.next_after, first.scanned) == ("s05", 6)
    second = await sagas.list_page(limit=2, status="compensated", after=first.next_after)
    assert [s.saga_id for s in second.sagas] == ["s10", "s15"]
    third = await sagas.list_page(limit=2, status="compensated", after=second.next_after)
    assert (third.sagas, third.next_after) == ([], None)
    geo = await sagas.list_page(saga_type="geo")
    assert [s.saga_id for s in geo.sagas] == ["s07"] and geo.next_after is None
    pending = await sagas.list_page(status="pending")
    assert [s.saga_id for s in pending.sagas] == ["p05", "s10x"]


async def test_max_scan_stops_a_sparse_filter_with_a_cursor(sagas: SagaClient) -> None:
    """A filter matching nothing early stops after max_scan entries and hands back where
    it stopped, so the caller can go on."""
    page = await sagas.list_page(limit=5, saga_type="geo", max_scan=4)
    assert (page.sagas, page.scanned, page.next_after) == ([], 4, "s02")
    found = await sagas.list_page(limit=5, saga_type="geo", max_scan=10, after=page.next_after)
    assert [s.saga_id for s in found.sagas] == ["s07"]


async def test_list_page_reads_at_one_revision(client: EtcdClient, sagas: SagaClient) -> None:
    """A page's revision is the read's; its sagas are those at that revision."""
    page = await sagas.list_page(limit=50)
    await client.put(sagas.keys.saga("s00"), record("s00", "failed"))
    assert [s.status for s in page.sagas if s.saga_id == "s00"] == ["compensated"]
    again = await sagas.list_page(limit=50)
    assert again.revision > page.revision and [s.status for s in again.sagas if s.saga_id == "s00"] == ["failed"]


@pytest.mark.parametrize(
    ("options", "field"),
    [({"limit": 0}, "limit"), ({"limit": True}, "limit"), ({"after": "a/b"}, "after"), ({"after": ""}, "after"),
     ({"max_scan": 0}, "max_scan"), ({"status": "lost"}, "status")],
)  # fmt: skip
async def test_bad_page_arguments_name_what_was_wrong(sagas: SagaClient, options: dict[str, object], field: str) -> None:
    """A zero limit, a cursor that is no saga id, a zero scan bound, an unknown status: ConfigError naming it."""
    with pytest.raises(ConfigError, match=field) as caught:
        await sagas.list_page(**options)  # type: ignore[arg-type]
    assert caught.value.fields["field"] == field
