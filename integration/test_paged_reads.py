"""EtcdClient.get_pages on real etcd: pages in key order, every page at one revision."""

from __future__ import annotations

import pytest

from whizorch import EtcdClient
from whizorch.errors import CompactedError, ConfigError
from whizorch.etcd import Op, Page


async def pages_of(
    client: EtcdClient, prefix: str, *, page_size: int, revision: int = 0, keys_only: bool = False
) -> list[Page]:
    """Every page of the prefix."""
    pages = client.get_pages(prefix, prefix=True, page_size=page_size, revision=revision, keys_only=keys_only)
    return [page async for page in pages]


async def fill(client: EtcdClient, prefix: str, n: int) -> None:
    """Keys ``k000`` ... in one txn per 100 (values name the key)."""
    for start in range(0, n, 100):
        await client.txn([], [Op.put(f"{prefix}k{i:03d}", f"v{i}") for i in range(start, min(n, start + 100))])


async def test_pages_split_at_page_size_in_key_order(client: EtcdClient, prefix: str) -> None:
    """7 keys in pages of 3: 3, 3, 1 keys, ``more`` on all but the last, one revision."""
    await fill(client, prefix, 7)
    pages = await pages_of(client, prefix, page_size=3)
    assert [len(p.kvs) for p in pages] == [3, 3, 1]
    assert [p.more for p in pages] == [True, True, False]
    assert len({p.revision for p in pages}) == 1
    keys = [kv.key.decode() for p in pages for kv in p.kvs]
    assert keys == [f"{prefix}k{i:03d}" for i in range(7)]


async def test_an_exact_multiple_of_page_size_ends_without_an_empty_page(client: EtcdClient, prefix: str) -> None:
    """6 keys in pages of 3: two pages, the second says no more (no empty third page)."""
    await fill(client, prefix, 6)
    pages = await pages_of(client, prefix, page_size=3)
    assert [(len(p.kvs), p.more) for p in pages] == [(3, True), (3, False)]


async def test_an_empty_prefix_is_one_empty_page_at_the_current_revision(client: EtcdClient, prefix: str) -> None:
    """Nothing under the prefix: one page, no keys, no more, the store's revision."""
    head = (await client.put(prefix + "elsewhere", "x")).header.revision
    pages = await pages_of(client, prefix + "none/", page_size=5)
    assert len(pages) == 1 and pages[0].kvs == [] and not pages[0].more
    assert pages[0].revision >= head


async def test_pages_are_the_range_at_one_revision_while_writes_continue(client: EtcdClient, prefix: str) -> None:
    """Puts, overwrites and deletes between pages are not seen: the pages equal one read at
    the first page's revision, though the range changed before every page."""
    await fill(client, prefix, 50)
    seen = []
    revision = 0
    written = 0
    async for page in client.get_pages(prefix, prefix=True, page_size=7):
        revision = page.revision
        seen.extend(page.kvs)
        # ahead of the cursor and behind it: new keys, an overwrite, a delete
        written += 1
        await client.put(f"{prefix}k{written * 7 + 3:03d}", "changed")
        await client.put(f"{prefix}k{written:03d}x", "new")
        await client.put(f"{prefix}zz{written}", "new")
        await client.delete(f"{prefix}k{49 - written:03d}")
    assert written == 8  # 50 keys in pages of 7
    at_start = await client.get(prefix, prefix=True, revision=revision)
    assert seen == at_start.kvs
    assert [kv.key for kv in seen] == [f"{prefix}k{i:03d}".encode() for i in range(50)]
    now = await client.get(prefix, prefix=True)
    assert now.kvs != at_start.kvs


async def test_a_given_revision_reads_the_past(client: EtcdClient, prefix: str) -> None:
    """revision=R pages the range as it was at R, and every page says R."""
    await fill(client, prefix, 5)
    old = (await client.get(prefix, prefix=True)).header.revision
    await client.delete(prefix + "k001")
    await client.put(prefix + "k009", "later")
    pages = await pages_of(client, prefix, page_size=2, revision=old)
    assert {p.revision for p in pages} == {old}
    assert [kv.key.decode()[-4:] for p in pages for kv in p.kvs] == ["k000", "k001", "k002", "k003", "k004"]


async def test_keys_only_pages_carry_no_values(client: EtcdClient, prefix: str) -> None:
    """keys_only: keys and revisions, empty values."""
    await fill(client, prefix, 4)
    pages = await pages_of(client, prefix, page_size=3, keys_only=True)
    kvs = [kv for p in pages for kv in p.kvs]
    assert len(kvs) == 4 and all(kv.value == b"" and kv.mod_revision > 0 for kv in kvs)


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
async def test_a_page_size_that_is_not_a_positive_int_is_refused(client: EtcdClient, prefix: str, bad: object) -> None:
    """page_size 0, negative, bool or float: a ConfigError naming page_size, before any read."""
    with pytest.raises(ConfigError, match="page_size"):
        await anext(aiter(client.get_pages(prefix, prefix=True, page_size=bad)))  # type: ignore[arg-type]


@pytest.mark.etcd34
async def test_compaction_between_pages_raises_compacted_error(client: EtcdClient, prefix: str) -> None:
    """The read's revision compacted after the first page: the next page raises
    CompactedError (the caller reads again), never a page from another revision."""
    await fill(client, prefix, 6)
    pages = client.get_pages(prefix, prefix=True, page_size=2)
    first = await anext(pages)
    head = (await client.put(prefix + "k000", "moved on")).header.revision
    await client.compact(head)
    with pytest.raises(CompactedError):
        await anext(pages)
    assert first.revision < head
    again = await pages_of(client, prefix, page_size=2)
    assert sum(len(p.kvs) for p in again) == 6 and again[0].revision >= head
