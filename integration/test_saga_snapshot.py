"""read_namespace on real etcd: the rebuild's paged read equals one read at its revision."""

from __future__ import annotations

from typing import Any

import pytest

from whizorch import EtcdClient
from whizorch.errors import CompactedError, ConfigError
from whizorch.etcd import Op, RangeResult
from whizorch.saga._snapshot import read_namespace


async def test_paged_snapshot_equals_one_read_at_its_revision(client: EtcdClient, prefix: str) -> None:
    """Many pages (23 keys, 5 per page) give exactly one Range's keys at the same revision,
    and nothing of a sibling prefix that shares the namespace's first characters."""
    ns = prefix + "ns"
    await client.txn([], [Op.put(f"{ns}/{kind}/{i:02d}", f"{kind}{i}") for kind in ("saga", "submit") for i in range(11)])
    await client.put(f"{ns}/latency", "{}")
    await client.put(f"{ns}-other/saga/x", "not ours")
    kvs, revision = await read_namespace(client, f"{ns}/".encode(), page_size=5)
    once = await client.get(f"{ns}/", prefix=True, revision=revision)
    assert kvs == once.kvs and len(kvs) == 23
    assert not any(b"-other" in kv.key for kv in kvs)


async def test_an_empty_namespace_is_no_keys_at_the_current_revision(client: EtcdClient, prefix: str) -> None:
    """Nothing under the namespace: no keys and the store's revision (a watch starts after it)."""
    head = (await client.put(prefix + "x", "1")).header.revision
    kvs, revision = await read_namespace(client, f"{prefix}empty/".encode(), page_size=5)
    assert kvs == [] and revision >= head


async def test_writes_during_the_read_are_not_in_the_snapshot(client: EtcdClient, prefix: str) -> None:
    """A key written after the read's revision is absent; the watch from revision + 1 sees it."""
    ns = f"{prefix}ns/"
    await client.txn([], [Op.put(f"{ns}saga/{i:03d}", "r") for i in range(30)])
    kvs, revision = await read_namespace(client, ns.encode(), page_size=4)
    later = await client.put(f"{ns}saga/000-late", "r")
    assert later.header.revision > revision
    assert len(kvs) == 30 and all(kv.mod_revision <= revision for kv in kvs)


@pytest.mark.parametrize(("ns", "attempts"), [(b"no-slash", 3), ("str/", 3), (b"ns/", 0)])
async def test_bad_arguments_are_refused(client: EtcdClient, ns: object, attempts: int) -> None:
    """A prefix that is not bytes ending in '/', or attempts < 1: a ConfigError naming it."""
    with pytest.raises(ConfigError, match="ns_prefix|attempts"):
        await read_namespace(client, ns, attempts=attempts)  # type: ignore[arg-type]


class CompactingClient(EtcdClient):
    """A real client that, after its first ``compactions`` page reads, writes a key and
    compacts to it: auto-compaction striking mid-rebuild, on cue."""

    def __init__(self, endpoints: list[str], scratch: str, compactions: int) -> None:
        super().__init__(endpoints, timeout_s=3.0, retry_deadline_s=5.0)
        self.scratch = scratch
        self.left = compactions
        self.reads = 0

    async def get(self, key: Any, **options: Any) -> RangeResult:
        res = await super().get(key, **options)
        self.reads += 1
        if self.left > 0 and res.more:
            self.left -= 1
            head = (await self.put(self.scratch, str(self.reads))).header.revision
            await self.compact(head)
        return res


@pytest.mark.parametrize(("compactions", "attempts", "reads"), [(1, 3, 3), (2, 2, None)])
async def test_a_compaction_mid_read_restarts_it_up_to_attempts(
    etcd_endpoints: list[str], client: EtcdClient, prefix: str, compactions: int, attempts: int, reads: int | None
) -> None:
    """One compaction mid-read: the read starts over at a newer revision and returns the
    whole namespace. A compaction on every attempt: CompactedError after ``attempts``."""
    ns = f"{prefix}ns/"
    await client.txn([], [Op.put(f"{ns}saga/{i:02d}", "r") for i in range(9)])
    async with CompactingClient(etcd_endpoints, prefix + "scratch", compactions) as compacting:
        if reads is None:
            with pytest.raises(CompactedError):
                await read_namespace(compacting, ns.encode(), page_size=4, attempts=attempts)
            return
        kvs, revision = await read_namespace(compacting, ns.encode(), page_size=4, attempts=attempts)
        assert len(kvs) == 9 and compacting.reads == 1 + reads  # one wasted page, then every page again
        assert revision > kvs[-1].mod_revision
