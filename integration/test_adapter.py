"""The etcd adapter against real etcd: KV, txn, leases, bad input, endpoint failover."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from whizorch import (
    CompactedError,
    ConfigError,
    EtcdClient,
    EtcdError,
    EtcdUnavailableError,
    LeaseNotFoundError,
    OutcomeUnknownError,
    RequestTooLargeError,
)
from whizorch.etcd import Compare, DeleteResult, Op, PutResult, RangeResult
from whizorch.testing import EtcdMember, LocalEtcdCluster, eventually_async

# etcd's defaults: --max-request-bytes and --max-txn-ops
ETCD_MAX_REQUEST = 1536 * 1024
ETCD_MAX_TXN_OPS = 128


# -- KV ------------------------------------------------------------------------------


@pytest.mark.etcd34
async def test_put_get_delete_round_trip(client: EtcdClient, prefix: str) -> None:
    """put returns its revision; get returns value, revisions and version; delete returns prev_kv."""
    key = prefix + "k"
    first = await client.put(key, "v1")
    got = await client.get(key)
    assert got.count == 1 and got.first is not None
    kv = got.first
    assert (kv.key, kv.value, kv.version, kv.lease) == (key.encode(), b"v1", 1, 0)
    assert kv.create_revision == kv.mod_revision == first.header.revision
    assert got.header.revision >= first.header.revision

    second = await client.put(key, b"v2", prev_kv=True)
    assert second.header.revision > first.header.revision
    assert second.prev_kv is not None and second.prev_kv.value == b"v1"
    kv2 = (await client.get(key)).first
    assert kv2 is not None
    assert (kv2.value, kv2.version, kv2.create_revision, kv2.mod_revision) == (
        b"v2",
        2,
        first.header.revision,
        second.header.revision,
    )

    deleted = await client.delete(key, prev_kv=True)
    assert deleted.deleted == 1 and [p.value for p in deleted.prev_kvs] == [b"v2"]
    missing = await client.get(key)
    assert (missing.count, missing.kvs, missing.first) == (0, [], None)


@pytest.mark.etcd34
async def test_prefix_range_options_and_prefix_delete(client: EtcdClient, prefix: str) -> None:
    """A prefix get sees only that prefix (sorted, limit/more, keys_only, count_only); a
    prefix delete removes only that prefix."""
    for name in ("a/1", "a/2", "a/3", "ab", "b/1"):
        await client.put(prefix + name, name.upper())
    got = await client.get(prefix + "a/", prefix=True)
    assert [kv.key for kv in got.kvs] == [f"{prefix}a/{i}".encode() for i in (1, 2, 3)]
    assert [kv.value for kv in got.kvs] == [b"A/1", b"A/2", b"A/3"]

    limited = await client.get(prefix + "a/", prefix=True, limit=2, sort_order="descend")
    assert [kv.key for kv in limited.kvs] == [f"{prefix}a/{i}".encode() for i in (3, 2)]
    assert limited.more and limited.count == 3

    keys = await client.get(prefix + "a/", prefix=True, keys_only=True)
    assert all(kv.value == b"" for kv in keys.kvs) and len(keys.kvs) == 3
    counted = await client.get(prefix, prefix=True, count_only=True)
    assert counted.count == 5 and counted.kvs == []

    deleted = await client.delete(prefix + "a/", prefix=True)
    assert deleted.deleted == 3
    left = await client.get(prefix, prefix=True)
    assert [kv.key for kv in left.kvs] == [(prefix + "ab").encode(), (prefix + "b/1").encode()]


@pytest.mark.etcd34
async def test_get_at_an_old_revision_reads_history(client: EtcdClient, prefix: str) -> None:
    """get(revision=r) returns the value as of r; a revision past the head is an EtcdError."""
    key = prefix + "h"
    r1 = (await client.put(key, "old")).header.revision
    await client.put(key, "new")
    old = (await client.get(key, revision=r1)).first
    assert old is not None and old.value == b"old"
    now = await client.get(key)
    with pytest.raises(EtcdError, match="future revision"):
        await client.get(key, revision=now.header.revision + 1000)


@pytest.mark.etcd34
async def test_txn_runs_the_branch_its_compares_choose(client: EtcdClient, prefix: str) -> None:
    """A txn runs success ops when every compare holds, failure ops otherwise, with typed
    responses; create-if-absent (create_revision == 0) wins once."""
    key, other = prefix + "t", prefix + "other"
    created = await client.txn(
        [Compare.create_revision(key, "==", 0)],
        [Op.put(key, "first"), Op.get(key)],
        [Op.get(key)],
    )
    assert created.succeeded
    put, read = created.responses
    assert isinstance(put, PutResult) and isinstance(read, RangeResult)
    assert read.first is not None and read.first.value == b"first"
    rev = put.header.revision
    assert read.first.mod_revision == rev == created.header.revision

    again = await client.txn(
        [Compare.create_revision(key, "==", 0)], [Op.put(key, "second")], [Op.get(key)]
    )
    assert not again.succeeded
    (existing,) = again.responses
    assert isinstance(existing, RangeResult)
    assert existing.first is not None and existing.first.value == b"first"

    # several compares: all must hold
    both = await client.txn(
        [
            Compare.value(key, "==", "first"),
            Compare.mod_revision(key, "==", rev),
            Compare.version(key, "<", 2),
            Compare.lease(key, "==", 0),
        ],
        [Op.put(other, "x"), Op.delete(key, prev_kv=True)],
    )
    assert both.succeeded
    deleted = both.responses[1]
    assert isinstance(deleted, DeleteResult) and deleted.deleted == 1
    assert [p.value for p in deleted.prev_kvs] == [b"first"]
    one_fails = await client.txn(
        [Compare.value(other, "==", "x"), Compare.value(other, "!=", "x")], [Op.delete(other)]
    )
    assert not one_fails.succeeded and one_fails.responses == []
    assert (await client.get(other)).count == 1

    # a nested txn runs inside the outer branch
    nested = await client.txn(
        [Compare.version(other, ">", 0)],
        [Op.txn([Compare.value(other, "==", "x")], [Op.put(other, "y")], [Op.put(other, "z")])],
    )
    assert nested.succeeded
    inner = nested.responses[0]
    assert not isinstance(inner, (RangeResult, PutResult, DeleteResult)) and inner.succeeded
    kv = (await client.get(other)).first
    assert kv is not None and kv.value == b"y"


# -- leases --------------------------------------------------------------------------


@pytest.mark.etcd34
async def test_lease_grant_keepalive_ttl_list_revoke(client: EtcdClient, prefix: str) -> None:
    """A lease is granted, refreshed, listed and inspected; revoking it deletes its keys;
    a keepalive of the revoked lease raises LeaseNotFoundError; revoking twice is fine."""
    lease = await client.lease_grant(30)
    assert lease.id > 0 and lease.ttl == 30
    key = prefix + "leased"
    await client.put(key, "v", lease=lease.id)
    kv = (await client.get(key)).first
    assert kv is not None and kv.lease == lease.id

    info = await client.lease_time_to_live(lease.id, keys=True)
    assert info is not None
    assert info.id == lease.id and info.granted_ttl == 30 and 0 < info.ttl <= 30
    assert info.keys == (key.encode(),)
    assert await client.lease_keepalive_once(lease.id) == 30
    assert lease.id in await client.lease_list()

    await client.lease_revoke(lease.id)
    assert (await client.get(key)).count == 0
    assert await client.lease_time_to_live(lease.id) is None
    assert lease.id not in await client.lease_list()
    with pytest.raises(LeaseNotFoundError) as caught:
        await client.lease_keepalive_once(lease.id)
    assert caught.value.lease == lease.id
    await client.lease_revoke(lease.id)  # already gone: not an error
    # the shared keepalive stream still works for other leases after the failure
    other = await client.lease_grant(30)
    try:
        assert await client.lease_keepalive_once(other.id) == 30
    finally:
        await client.lease_revoke(other.id)


@pytest.mark.etcd34
async def test_lease_expiry_deletes_its_keys(client: EtcdClient, prefix: str) -> None:
    """A lease nobody keeps alive expires at the server and takes its keys with it."""
    lease = await client.lease_grant(1)  # the harness's election timeout allows TTL 1
    key = prefix + "expiring"
    await client.put(key, "v", lease=lease.id)

    async def gone() -> bool:
        return (await client.get(key)).count == 0

    await eventually_async(gone, timeout=10, interval=0.1)
    assert await client.lease_time_to_live(lease.id) is None
    with pytest.raises(LeaseNotFoundError):
        await client.lease_keepalive_once(lease.id)


@pytest.mark.etcd34
async def test_put_with_an_unknown_lease_is_lease_not_found(
    client: EtcdClient, prefix: str
) -> None:
    """Attaching a key to a lease that does not exist raises LeaseNotFoundError, writes nothing."""
    lease = await client.lease_grant(30)
    await client.lease_revoke(lease.id)
    with pytest.raises(LeaseNotFoundError):
        await client.put(prefix + "k", "v", lease=lease.id)
    assert (await client.get(prefix + "k")).count == 0


# -- bad input -----------------------------------------------------------------------


async def test_empty_key_is_a_config_error(client: EtcdClient) -> None:
    """An empty key is refused before sending, naming the key field."""
    for call in (
        lambda: client.get(""),
        lambda: client.put("", "v"),
        lambda: client.put(b"", "v"),
        lambda: client.delete(""),
        lambda: client.txn([Compare.value("", "==", "v")]),
    ):
        with pytest.raises(ConfigError, match="key must not be empty") as caught:
            await call()
        assert caught.value.field == "key"


async def test_wrong_types_are_config_errors(client: EtcdClient, prefix: str) -> None:
    """Keys and values must be str or bytes: an int is a ConfigError (a ValueError) that
    names the field, and nothing is written."""
    with pytest.raises(ConfigError, match="key must be str or bytes") as caught:
        await client.put(1, "v")  # type: ignore[arg-type]
    assert caught.value.field == "key" and isinstance(caught.value, ValueError)
    with pytest.raises(ConfigError, match="value must be str or bytes") as caught:
        await client.put(prefix + "k", 1)  # type: ignore[arg-type]
    assert caught.value.field == "value"
    with pytest.raises(ConfigError, match="key must be str or bytes"):
        await client.get(1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="txn ops must be Op objects"):
        await client.txn([], [("put", "k", "v")])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="compare operator"):
        Compare.value(prefix + "k", "=", "v")
    assert (await client.get(prefix, prefix=True)).count == 0


async def test_negative_revisions_and_ttls_are_config_errors(
    client: EtcdClient, prefix: str
) -> None:
    """Negative revisions (get, compares, watches) and non-positive lease TTLs are refused
    before sending."""
    with pytest.raises(ConfigError, match="non-negative") as caught:
        await client.get(prefix + "k", revision=-1)
    assert caught.value.field == "revision"
    with pytest.raises(ConfigError, match="non-negative"):
        Compare.mod_revision(prefix + "k", "==", -5)
    with pytest.raises(ConfigError):
        client.watch(prefix + "k", start_revision=-1)
    for ttl in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="positive whole number"):
            await client.lease_grant(ttl)  # type: ignore[arg-type]


@pytest.mark.etcd34
async def test_value_over_the_request_limit_is_refused_client_side(
    client: EtcdClient, prefix: str
) -> None:
    """A request over 1.5 MiB raises RequestTooLargeError naming its size, before sending."""
    key = prefix + "big"
    with pytest.raises(RequestTooLargeError) as caught:
        await client.put(key, b"x" * ETCD_MAX_REQUEST)
    err = caught.value
    assert isinstance(err, ValueError) and not isinstance(err, ConfigError)
    assert err.size > ETCD_MAX_REQUEST
    assert str(err.size) in str(err) and str(ETCD_MAX_REQUEST) in str(err)
    with pytest.raises(RequestTooLargeError):
        await client.txn([], [Op.put(key, b"x" * (ETCD_MAX_REQUEST // 2))] * 3)
    assert (await client.get(key)).count == 0
    # just under the limit is accepted
    await client.put(key, b"x" * (ETCD_MAX_REQUEST - 4096))
    assert (await client.get(key, count_only=True)).count == 1


@pytest.mark.etcd34
async def test_server_refusal_of_a_large_request_is_request_too_large(
    etcd_endpoints: list[str], prefix: str
) -> None:
    """With the client's limit raised past the server's, etcd's own refusal (and gRPC's,
    past the server's receive limit) is RequestTooLargeError, not OutcomeUnknownError;
    nothing is written and the client keeps working."""
    key = prefix + "big"
    async with EtcdClient(
        etcd_endpoints, max_request_bytes=16 * ETCD_MAX_REQUEST, timeout_s=5.0, retry_deadline_s=5.0
    ) as big:
        try:
            # past etcd's --max-request-bytes: refused by etcd before Raft
            with pytest.raises(RequestTooLargeError, match="too large"):
                await big.put(key, b"x" * (ETCD_MAX_REQUEST + 64 * 1024))
            # past etcd's gRPC receive limit (max-request-bytes + 512 KiB): refused by gRPC
            with pytest.raises(RequestTooLargeError, match="larger than max"):
                await big.put(key, b"x" * (3 * ETCD_MAX_REQUEST))
            assert (await big.get(key)).count == 0
            await big.put(key, "small")
            kv = (await big.get(key)).first
            assert kv is not None and kv.value == b"small"
        finally:
            await big.delete(prefix, prefix=True)


@pytest.mark.etcd34
async def test_txn_with_too_many_ops_is_a_config_error(client: EtcdClient, prefix: str) -> None:
    """etcd's 128-op limit per txn: 128 ops commit, 129 raise ConfigError saying so."""
    ops = [Op.put(f"{prefix}op/{i:03}", "v") for i in range(ETCD_MAX_TXN_OPS + 1)]
    with pytest.raises(ConfigError, match="too many operations in txn") as caught:
        await client.txn([], ops)
    assert not isinstance(caught.value, RequestTooLargeError)
    assert caught.value.code == "INVALID_ARGUMENT"
    assert (await client.get(prefix + "op/", prefix=True, count_only=True)).count == 0
    assert (await client.txn([], ops[:ETCD_MAX_TXN_OPS])).succeeded
    assert (
        await client.get(prefix + "op/", prefix=True, count_only=True)
    ).count == ETCD_MAX_TXN_OPS


@pytest.mark.etcd34
async def test_get_of_a_compacted_revision_is_compacted_error(
    client: EtcdClient, prefix: str
) -> None:
    """Reading a revision older than the last compaction raises CompactedError."""
    key = prefix + "c"
    old = (await client.put(key, "1")).header.revision
    head = (await client.put(key, "2")).header.revision
    await client.compact(head)
    with pytest.raises(CompactedError) as caught:
        await client.get(key, revision=old)
    assert caught.value.code == "OUT_OF_RANGE"
    await client.compact(head)  # compacting the same revision again is not an error
    kv = (await client.get(key, revision=head)).first
    assert kv is not None and kv.value == b"2"


# -- failover ------------------------------------------------------------------------


def _unread_bytes(port: int) -> int:
    """Bytes received and not yet read by the sockets of 127.0.0.1:``port`` (Linux)."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, queues = fields[1], fields[3], fields[4]
        if state == "01" and int(local.rpartition(":")[2], 16) == port:  # ESTABLISHED
            total += int(queues.partition(":")[2], 16)
    return total


def _member_at(cluster: LocalEtcdCluster, endpoint: str) -> EtcdMember:
    (member,) = [m for m in cluster.members if m.endpoint == endpoint]
    return member


@pytest.mark.etcd34
@pytest.mark.slow
async def test_reads_and_writes_continue_after_the_current_member_is_killed(
    etcd_cluster: LocalEtcdCluster,
) -> None:
    """With every endpoint given, killing the member the client talks to leaves reads and
    fresh writes working on the others within a deadline."""
    async with EtcdClient(
        etcd_cluster.endpoints, timeout_s=2.0, connect_timeout_s=0.5, retry_deadline_s=8.0
    ) as c:
        await c.put("failover/before", "1")
        victim = _member_at(etcd_cluster, c.endpoint)
        await victim.akill()

        # a read is retried on the next endpoint (a new leader may be being elected)
        kv = (await c.get("failover/before")).first
        assert kv is not None and kv.value == b"1"
        assert c.endpoint != victim.endpoint

        # a write whose answer was lost is never resent; a fresh one must get through
        attempts = iter(range(1000))
        written: list[str] = []

        async def fresh_write() -> None:
            key = f"failover/after/{next(attempts)}"
            await c.put(key, "2")
            written.append(key)

        await eventually_async(
            fresh_write,
            timeout=10,
            interval=0.1,
            retry_on=(OutcomeUnknownError, EtcdUnavailableError),
        )
        kv = (await c.get(written[0])).first
        assert kv is not None and kv.value == b"2"


@pytest.mark.etcd34
@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")
async def test_a_write_in_flight_when_its_member_dies_is_outcome_unknown(
    etcd_cluster: LocalEtcdCluster,
) -> None:
    """A write sent to a member that then dies raises OutcomeUnknownError (it is not
    replayed); the next write goes to another member and succeeds."""
    async with EtcdClient(
        etcd_cluster.endpoints, timeout_s=2.0, connect_timeout_s=0.5, retry_deadline_s=8.0
    ) as c:
        await c.put("inflight/warm", "1")  # the channel to the current member is up
        victim = _member_at(etcd_cluster, c.endpoint)
        victim.pause()  # the request reaches its socket but is never read
        value = b"v" * 4096  # big enough to tell the request from HTTP/2 pings in the socket
        write = asyncio.create_task(c.put("inflight/k", value))
        # the request has left the client once it waits, unread, in the member's socket
        await eventually_async(lambda: _unread_bytes(victim.client_port) > len(value), timeout=5)
        assert not write.done()
        # SIGKILL straight from stopped (the harness kills a paused member frozen): the
        # member never reads the request
        await victim.akill()
        with pytest.raises(OutcomeUnknownError) as caught:
            await write
        assert caught.value.endpoint == victim.endpoint

        # if the victim led, writes sent while the others elect a leader may be lost
        # too (OutcomeUnknownError): each attempt writes a fresh key
        attempts = iter(range(1000))

        async def fresh_write() -> None:
            await c.put(f"inflight/next/{next(attempts)}", "v2")

        await eventually_async(
            fresh_write,
            timeout=15,
            interval=0.1,
            retry_on=(OutcomeUnknownError, EtcdUnavailableError),
        )
        assert c.endpoint != victim.endpoint
        # the outcome is learned by reading: the request died unread with its member
        assert (await c.get("inflight/k")).first is None


@pytest.mark.etcd34
@pytest.mark.slow
async def test_a_member_without_quorum_refuses_fast(etcd_cluster: LocalEtcdCluster) -> None:
    """With 2 of 3 members down, calls fail with EtcdUnavailableError ('no leader', thanks
    to the hasleader metadata) within the retry deadline instead of hanging per attempt;
    a write refused so is not OutcomeUnknownError; service resumes with the quorum."""
    survivor, *others = etcd_cluster.members
    for member in others:
        await member.akill()
    timeout_s, retry_deadline_s = 5.0, 1.0
    async with EtcdClient(
        survivor.endpoint, timeout_s=timeout_s, retry_deadline_s=retry_deadline_s
    ) as c:

        async def leaderless() -> bool:
            return (await c.status(survivor.endpoint, timeout_s=1.0)).leader == 0

        await eventually_async(leaderless, timeout=10, retry_on=(AssertionError, EtcdError))

        for call in (lambda: c.get("quorum/k"), lambda: c.put("quorum/k", "v")):
            started = time.monotonic()
            with pytest.raises(EtcdUnavailableError) as caught:
                await call()
            elapsed = time.monotonic() - started
            assert not isinstance(caught.value, OutcomeUnknownError)
            assert "no leader" in str(caught.value)
            # without hasleader a linearizable call would wait out timeout_s per attempt
            assert elapsed < retry_deadline_s + 1.5 < timeout_s, elapsed

        await others[0].astart()

        async def works() -> None:
            await c.put("quorum/k", "back")

        await eventually_async(works, timeout=15, interval=0.1, retry_on=(EtcdUnavailableError,))
        kv = (await c.get("quorum/k")).first
        assert kv is not None and kv.value == b"back"
