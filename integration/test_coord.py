"""The coordination primitives against real etcd: Session, Lock, Election, state, IDs.

Every test talks to real etcd processes (never a mock). Tests on the module's shared
cluster use the ``client`` fixture and keys under their own ``prefix``; tests that
pause or kill members start a cluster of their own. Cancellation and timeouts that
must leave nothing behind are in ``test_coord_cancel.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from _coord import KeepaliveLog, keys_under, lease_gone, leases, queue_key, wait_keys

from whizorch import (
    ClosedError,
    ConfigError,
    ConflictError,
    Election,
    EtcdClient,
    EtcdError,
    Fence,
    FencedError,
    GlobalIds,
    Lock,
    NotOwnerError,
    Session,
    SessionLostError,
    VersionedStore,
    has_quorum,
    propose_value,
)
from whizorch.testing import LocalEtcdCluster, eventually_async

# -- Session -------------------------------------------------------------------------


async def test_session_grants_a_lease_with_the_ttl(client: EtcdClient, other: EtcdClient) -> None:
    """Opening a Session grants one lease with the requested TTL, visible to other clients."""
    async with Session(client, ttl_s=7) as session:
        assert session.lease_id > 0
        # etcd's leader answers; it may apply the grant a moment after our member did
        info = await eventually_async(lambda: other.lease_time_to_live(session.lease_id), timeout=3)
        assert info.granted_ttl == 7
        assert 0 < info.ttl <= 7
        assert not session.is_lost
        session.check()


async def test_session_keepalive_outlives_several_ttls(client: EtcdClient, other: EtcdClient) -> None:
    """The keepalive keeps a 2 s lease alive for 3.25 TTLs: every probe by another client
    finds it."""
    async with Session(client, ttl_s=2) as session:
        await eventually_async(lambda: other.lease_time_to_live(session.lease_id), timeout=3)
        loop = asyncio.get_running_loop()
        end = loop.time() + 6.5
        probes = 0
        while loop.time() < end:
            info = await other.lease_time_to_live(session.lease_id)
            assert info is not None, f"lease expired after {probes} probes"
            assert info.granted_ttl == 2
            probes += 1
            await asyncio.sleep(0.25)  # ok: the point is to outlive several TTLs; probes come well within one TTL
        assert probes >= 10
        assert not session.lost.is_set()
        assert session.remaining_s > 0


async def test_session_close_revokes_the_lease(client: EtcdClient, other: EtcdClient, prefix: str) -> None:
    """close() revokes the lease at once (its keys vanish); lost is set; closing twice is fine."""
    session = await Session(client, ttl_s=30).open()
    await client.put(prefix + "leased", b"x", lease=session.lease_id)
    await session.close()
    assert session.lost.is_set()
    await lease_gone(other, session.lease_id)  # TTL 30 s: revoked, not expired
    assert (await other.get(prefix + "leased")).kvs == []
    await session.close()
    with pytest.raises(SessionLostError):
        session.check()


async def test_session_misuse(client: EtcdClient) -> None:
    """Bad TTL or margin -> ConfigError naming the field; check() before open and reopen
    after close -> ClosedError."""
    for ttl in (0, -1, 1.5, True):
        with pytest.raises(ConfigError) as info:
            Session(client, ttl_s=ttl)  # type: ignore[arg-type]
        assert info.value.field == "ttl_s"
    for margin in (2, 3.0, -0.1):
        with pytest.raises(ConfigError) as info:
            Session(client, ttl_s=2, step_down_margin_s=margin)
        assert info.value.field == "step_down_margin_s"
    with pytest.raises(ConfigError) as info:
        Session(client, ttl_s=3, step_down_margin_s=1, keepalive_interval_s=2)
    assert info.value.field == "keepalive_interval_s"
    with pytest.raises(ConfigError) as info:
        Session("127.0.0.1:2379", ttl_s=3)  # type: ignore[arg-type]
    assert info.value.field == "client"

    session = Session(client, ttl_s=5)
    with pytest.raises(ClosedError):
        session.check()
    async with session:
        session.check()
    with pytest.raises(ClosedError):
        await session.open()
    with pytest.raises(ClosedError):
        async with session:
            pass  # pragma: no cover


@pytest.mark.etcd34
async def test_session_lost_before_the_server_can_expire_the_lease(
    etcd_cluster_factory: Callable[..., LocalEtcdCluster],
) -> None:
    """With etcd frozen (SIGSTOP), `lost` is set before the last keepalive's send time +
    TTL, and everything the lease guarded (leadership, lock) is given up by then."""
    cluster = etcd_cluster_factory(size=1)
    member = cluster.members[0]
    ttl = 2
    async with EtcdClient(cluster.endpoints, timeout_s=1.0, retry_deadline_s=2.0) as client:
        kalog = KeepaliveLog(client)
        loop = asyncio.get_running_loop()
        grant_sent = loop.time()
        async with Session(client, ttl_s=ttl) as session:
            kalog.ok.append((grant_sent, ttl))  # the grant is the first proof of life
            lost_at: list[float] = []
            session.on_lost(lambda _s: lost_at.append(loop.time()))
            election = Election(session, "lost-test/leader")
            await election.campaign("me")
            lock = Lock(session, "lost-test/lock")
            await lock.acquire(timeout_s=5)
            guarded_lost_at: dict[str, float] = {}

            async def note(what: str, event: asyncio.Event) -> None:
                await event.wait()
                guarded_lost_at[what] = loop.time()

            # two keepalives answered: the loop is running normally before the freeze
            await eventually_async(lambda: len(kalog.ok) >= 3, timeout=5)
            assert not session.is_lost
            async with asyncio.TaskGroup() as tg:
                tg.create_task(note("election", election.lost))
                paused_at = loop.time()
                await asyncio.to_thread(member.pause)
                try:
                    async with asyncio.timeout(ttl + 2):
                        await session.lost.wait()
                    assert not lock.is_held  # a local belief, tied to the session
                    async with asyncio.timeout(1):
                        await election.lost.wait()
                finally:
                    await asyncio.to_thread(member.resume)

            last_ok_sent, last_ttl = kalog.ok[-1]
            assert last_ttl == ttl
            (lost,) = lost_at
            lost_after_last_ok = lost - last_ok_sent
            print(
                f"\nsession lost {lost - paused_at:.3f}s after SIGSTOP, "
                f"{lost_after_last_ok:.3f}s after the last successful keepalive was sent "
                f"(TTL {ttl}s, margin {session.step_down_margin_s}s); "
                f"election lost +{guarded_lost_at['election'] - lost:.3f}s"
            )
            # the server counts the TTL from when it got the keepalive, after it was sent
            assert lost < last_ok_sent + ttl
            assert lost >= last_ok_sent + ttl - session.step_down_margin_s - 0.01
            assert guarded_lost_at["election"] < last_ok_sent + ttl
            assert not election.is_leader
            assert session.lost_reason is not None and "keepalive" in session.lost_reason
            with pytest.raises(SessionLostError):
                session.check()

            # etcd runs again: nobody refreshes the lease any more, so it expires
            async def expired() -> bool:
                return await client.lease_time_to_live(session.lease_id) is None

            await eventually_async(expired, timeout=ttl + 5, retry_on=(AssertionError, EtcdError))
            assert session.is_lost
            assert await keys_under(client, "lost-test/") == []
            await lock.release()  # fenced: a no-op now
            await election.resign()


# -- Lock ----------------------------------------------------------------------------


@pytest.mark.etcd34
async def test_lock_is_mutually_exclusive(client: EtcdClient, other: EtcdClient, prefix: str) -> None:
    """While one session holds a lock another cannot take it; after release it can, with
    a larger fencing token."""
    name = prefix + "mutex"
    async with Session(client, ttl_s=10) as s1, Session(other, ttl_s=10) as s2:
        first, second = Lock(s1, name), Lock(s2, name)
        token1 = await first.acquire(timeout_s=5)
        assert first.is_held and first.token == token1
        assert first.fence == Fence(queue_key(name, s1), token1)
        waiting = asyncio.create_task(second.acquire())
        await wait_keys(client, name + "/", 2)
        assert not waiting.done() and not second.is_held
        await first.release()
        async with asyncio.timeout(5):
            token2 = await waiting
        assert token2 > token1
        assert second.is_held and not first.is_held
        (kv,) = await keys_under(client, name + "/")
        assert kv.key == queue_key(name, s2) and kv.lease == s2.lease_id
        await second.release()
        assert await keys_under(client, name + "/") == []


@pytest.mark.etcd34
async def test_lock_8_contenders_200_fenced_increments(
    etcd_endpoints: list[str], client: EtcdClient, prefix: str
) -> None:
    """8 contenders x 25 fenced read-modify-writes of one counter: never two holders at
    once, the counter ends at exactly 200, tokens rise in acquisition order."""
    name, counter = prefix + "counter-lock", prefix + "counter"
    await VersionedStore(client).create(counter, b"0")
    holders = max_holders = 0
    tokens: list[int] = []

    async def contender(i: int) -> None:
        nonlocal holders, max_holders
        # each contender talks to a different member first
        n = i % len(etcd_endpoints)
        endpoints = etcd_endpoints[n:] + etcd_endpoints[:n]
        async with (
            EtcdClient(endpoints, timeout_s=5.0, retry_deadline_s=10.0) as c,
            Session(c, ttl_s=10) as session,
        ):
            lock, store = Lock(session, name), VersionedStore(c)
            for _ in range(25):
                token = await lock.acquire(timeout_s=30)
                holders += 1
                max_holders = max(max_holders, holders)
                try:
                    cur = await store.get(counter)
                    assert cur is not None
                    await store.compare_and_set(
                        counter,
                        str(int(cur.value) + 1),
                        expected_revision=cur.mod_revision,
                        fence=lock.fence,
                    )
                    tokens.append(token)
                finally:
                    holders -= 1
                    await lock.release()

    async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
        for i in range(8):
            tg.create_task(contender(i))
    final = await VersionedStore(client).get(counter)
    assert final is not None and final.value == b"200"
    assert max_holders == 1
    assert len(tokens) == 200
    assert tokens == sorted(set(tokens))
    assert await keys_under(client, name + "/") == []


async def test_lock_release_is_fenced_after_key_deleted(
    client: EtcdClient, other: EtcdClient, prefix: str
) -> None:
    """When a holder's key was deleted by someone else and a new holder took the lock,
    the old holder's release leaves the new holder's key alone."""
    name = prefix + "fenced"
    async with Session(client, ttl_s=10) as s1, Session(other, ttl_s=10) as s2:
        old, new = Lock(s1, name), Lock(s2, name)
        old_fence = Fence(queue_key(name, s1), await old.acquire(timeout_s=5))
        await other.delete(old_fence.key)
        new_token = await new.acquire(timeout_s=5)
        await old.release()
        (kv,) = await keys_under(other, name + "/")
        assert (kv.key, kv.create_revision) == (queue_key(name, s2), new_token)
        with pytest.raises(FencedError) as info:
            await VersionedStore(client).create(prefix + "guarded", b"x", fence=old_fence)
        assert info.value.current_token == 0
        await new.release()


@pytest.mark.etcd34
async def test_lock_release_is_fenced_after_session_lost(
    client: EtcdClient, other: EtcdClient, prefix: str
) -> None:
    """When a holder's lease is revoked (session lost) and a new holder took the lock, the
    old holder sees it is lost and its release leaves the new holder's key alone."""
    name = prefix + "lost"
    async with Session(client, ttl_s=3) as s1, Session(other, ttl_s=10) as s2:
        old, new = Lock(s1, name), Lock(s2, name)
        await old.acquire(timeout_s=5)
        waiting = asyncio.create_task(new.acquire())
        await wait_keys(other, name + "/", 2)
        await other.lease_revoke(s1.lease_id)
        async with asyncio.timeout(5):
            new_token = await waiting
        async with asyncio.timeout(s1.keepalive_interval_s + 3):
            await s1.lost.wait()
        assert not old.is_held
        with pytest.raises(SessionLostError):
            s1.check()
        await old.release()
        (kv,) = await keys_under(other, name + "/")
        assert (kv.key, kv.create_revision, kv.lease) == (queue_key(name, s2), new_token, s2.lease_id)
        await new.release()


@pytest.mark.etcd34
async def test_lock_waiter_whose_key_vanished_does_not_acquire(
    client: EtcdClient, other: EtcdClient, prefix: str
) -> None:
    """A waiter whose lease is revoked while it waits, before its session notices, does
    not take the lock when the holder releases (etcd's fix for the Jepsen finding)."""
    name = prefix + "jepsen"
    async with Session(client, ttl_s=10) as hs, Session(client, ttl_s=30) as ws:
        holder, waiter = Lock(hs, name), Lock(ws, name)
        await holder.acquire(timeout_s=5)
        waiting = asyncio.create_task(waiter.acquire())
        await wait_keys(other, name + "/", 2)
        await other.lease_revoke(ws.lease_id)
        await holder.release()
        async with asyncio.timeout(5):
            with pytest.raises(NotOwnerError, match="deleted while waiting"):
                await waiting
        assert not waiter.is_held and not ws.is_lost  # its session has not noticed yet
        assert await keys_under(other, name + "/") == []


async def test_lock_waiters_are_served_in_create_revision_order(client: EtcdClient, prefix: str) -> None:
    """Waiters acquire in the order their keys were created (FIFO by create revision)."""
    name = prefix + "fifo"
    order: list[str] = []
    async with (
        Session(client, ttl_s=10) as sh,
        Session(client, ttl_s=10) as s1,
        Session(client, ttl_s=10) as s2,
        Session(client, ttl_s=10) as s3,
    ):
        holder = Lock(sh, name)
        await holder.acquire(timeout_s=5)

        async def waiter(tag: str, session: Session) -> None:
            lock = Lock(session, name)
            await lock.acquire(timeout_s=20)
            order.append(tag)
            await lock.release()

        async with asyncio.TaskGroup() as tg:
            # enqueue w3, w1, w2 in that order: tags must not explain the result
            for count, (tag, session) in enumerate((("w3", s3), ("w1", s1), ("w2", s2)), start=2):
                tg.create_task(waiter(tag, session))
                await wait_keys(client, name + "/", count)
            queued = await keys_under(client, name + "/")
            by_lease = {s.lease_id: tag for tag, s in (("w1", s1), ("w2", s2), ("w3", s3))}
            expected = [by_lease[kv.lease] for kv in queued[1:]]
            assert expected == ["w3", "w1", "w2"]
            await holder.release()
        assert order == expected


async def test_lock_with_own_session_revokes_its_lease(
    client: EtcdClient, other: EtcdClient, prefix: str
) -> None:
    """`async with Lock(client, name, ttl_s=...)` holds on a lease of its own and revokes
    it on release: the cluster's lease list is back to what it was."""
    name = prefix + "own"
    before = await leases(other)
    lock = Lock(client, name, ttl_s=5)
    async with lock:
        assert lock.session is not None
        lease = lock.session.lease_id
        assert lease not in before
        assert lease in await leases(other)
        (kv,) = await keys_under(other, name + "/")
        assert kv.lease == lease and kv.create_revision == lock.token
        info = await eventually_async(lambda: other.lease_time_to_live(lease), timeout=3)
        assert info.granted_ttl == 5
    assert not lock.is_held
    after = await leases(other)
    assert lease not in after
    assert after <= before
    assert await keys_under(other, name + "/") == []


async def test_lock_acquire_twice_is_misuse(client: EtcdClient, prefix: str) -> None:
    """acquire() on a Lock already held raises ConfigError; release() is idempotent."""
    async with Session(client, ttl_s=10) as session:
        lock = Lock(session, prefix + "twice")
        await lock.acquire(timeout_s=5)
        with pytest.raises(ConfigError):
            await lock.acquire(timeout_s=1)
        await lock.release()
        await lock.release()
        with pytest.raises(NotOwnerError):
            lock.fence  # noqa: B018
        assert await keys_under(client, prefix + "twice/") == []


# -- Election ------------------------------------------------------------------------


@pytest.mark.etcd34
async def test_election_campaign_leader_proclaim_resign(
    client: EtcdClient, other: EtcdClient, prefix: str
) -> None:
    """campaign makes the candidate leader (etcdctl key layout, term = create revision);
    proclaim changes the value, not the term; resign leaves no leader."""
    name = prefix + "elect"
    async with Session(client, ttl_s=10) as session:
        election = Election(session, name)
        assert not election.is_leader
        assert await election.leader() is None
        fence = await election.campaign("v1")
        assert election.is_leader and election.term == fence.token
        assert fence.key == queue_key(name, session)
        observer = Election(Session(other), name)  # reading needs no open session
        leader = await observer.leader()
        assert leader is not None
        assert (leader.key, leader.value, leader.revision, leader.lease) == (
            fence.key, b"v1", fence.token, session.lease_id,
        )
        await election.proclaim("v2")
        leader = await observer.leader()
        assert leader is not None and leader.value == b"v2" and leader.revision == fence.token
        assert election.is_leader
        # campaigning again while leader just proclaims
        assert await election.campaign("v3") == fence
        leader = await observer.leader()
        assert leader is not None and leader.value == b"v3"
        await election.resign()
        assert not election.is_leader and election.lost.is_set()
        assert await observer.leader() is None
        await election.resign()
        with pytest.raises(NotOwnerError):
            await election.proclaim("v4")


@pytest.mark.etcd34
async def test_election_second_candidate_takes_over_after_resign(
    client: EtcdClient, other: EtcdClient, prefix: str
) -> None:
    """A second candidate waits while the first leads, and leads (with a higher term)
    once the first resigns."""
    name = prefix + "takeover"
    async with Session(client, ttl_s=10) as s1, Session(other, ttl_s=10) as s2:
        first, second = Election(s1, name), Election(s2, name)
        term1 = (await first.campaign("one")).token
        campaign = asyncio.create_task(second.campaign("two"))
        await wait_keys(client, name + "/", 2)
        assert not campaign.done() and not second.is_leader
        leader = await second.leader()
        assert leader is not None and leader.value == b"one"
        await first.resign()
        async with asyncio.timeout(5):
            fence2 = await campaign
        assert fence2.token > term1
        assert second.is_leader and not first.is_leader
        leader = await first.leader()
        assert leader is not None and (leader.value, leader.revision) == (b"two", fence2.token)
        await second.resign()


async def test_election_observe_yields_the_new_leader_after_resign(
    client: EtcdClient, other: EtcdClient, prefix: str
) -> None:
    """observe() yields the current leader, then the next one after a resign, then None
    when nobody is left."""
    name = prefix + "observe"
    seen: list[bytes | None] = []
    async with (
        Session(client, ttl_s=10) as s1,
        Session(client, ttl_s=10) as s2,
        Session(other, ttl_s=10) as s3,
    ):
        first, second = Election(s1, name), Election(s2, name)
        await first.campaign("one")

        async def observe() -> None:
            async with contextlib.aclosing(Election(s3, name).observe()) as leaders:
                async for leader in leaders:
                    seen.append(None if leader is None else leader.value)
                    if leader is None:
                        return

        async with asyncio.timeout(15), asyncio.TaskGroup() as tg:
            tg.create_task(observe())
            await eventually_async(lambda: seen == [b"one"], timeout=5)
            campaign = tg.create_task(second.campaign("two"))
            await wait_keys(client, name + "/", 2)
            await first.resign()
            await campaign
            await eventually_async(lambda: seen == [b"one", b"two"], timeout=5)
            await second.proclaim("two-b")
            await eventually_async(lambda: seen == [b"one", b"two", b"two-b"], timeout=5)
            await second.resign()
        assert seen == [b"one", b"two", b"two-b", None]


@pytest.mark.etcd34
async def test_election_leader_told_when_its_session_is_lost(
    client: EtcdClient, other: EtcdClient, prefix: str
) -> None:
    """Revoking the leader's lease ends its leadership: `lost` is set, is_leader is
    False, its old fence is rejected (FencedError), proclaim raises NotOwnerError."""
    name = prefix + "revoked"
    async with Session(client, ttl_s=3) as session:
        election = Election(session, name)
        fence = await election.campaign("leader")
        store = VersionedStore(client)
        await store.create(prefix + "before", b"ok", fence=fence)
        await other.lease_revoke(session.lease_id)
        async with asyncio.timeout(5):
            await election.lost.wait()
        assert not election.is_leader
        with pytest.raises(NotOwnerError):
            election.fence  # noqa: B018
        with pytest.raises(FencedError) as info:
            await store.create(prefix + "after", b"late", fence=fence)
        assert info.value.token == fence.token and info.value.current_token == 0
        with pytest.raises(FencedError):
            await propose_value(client, prefix + "after", b"late", fence=fence)
        with pytest.raises(NotOwnerError):
            await election.proclaim("still me?")
        assert await store.get(prefix + "after") is None
        # the session notices too, at its next keepalive
        async with asyncio.timeout(session.keepalive_interval_s + 3):
            await session.lost.wait()
        with pytest.raises(SessionLostError):
            await election.campaign("again")


async def test_election_leader_told_when_its_key_is_deleted(
    client: EtcdClient, other: EtcdClient, prefix: str
) -> None:
    """Deleting the leader's key (session still alive) ends its leadership at once."""
    name = prefix + "deleted"
    async with Session(client, ttl_s=10) as session:
        election = Election(session, name)
        fence = await election.campaign("leader")
        await other.delete(fence.key)
        async with asyncio.timeout(5):
            await election.lost.wait()
        assert not election.is_leader and not session.is_lost
        with pytest.raises(NotOwnerError):
            await election.proclaim("x")
        # the session is fine: it can campaign again, for a new term
        fence2 = await election.campaign("back")
        assert fence2.token > fence.token and election.is_leader
        await election.resign()


# -- VersionedStore, GlobalIds, consensus ---------------------------------------------


async def test_store_create_if_absent(client: EtcdClient, prefix: str) -> None:
    """create() writes once; a second create raises ConflictError with actual_revision."""
    store = VersionedStore(client, prefix)
    rev = await store.create("k", "v1")
    got = await store.get("k")
    assert got is not None
    assert (got.key, got.value, got.mod_revision, got.create_revision, got.version) == (
        (prefix + "k").encode(), b"v1", rev, rev, 1,
    )
    with pytest.raises(ConflictError) as info:
        await store.create("k", "v2")
    assert info.value.actual_revision == rev
    assert info.value.expected_revision == 0
    got = await store.get("k")
    assert got is not None and got.value == b"v1"


async def test_store_compare_and_set(client: EtcdClient, prefix: str) -> None:
    """compare_and_set writes only at the expected mod_revision; a stale one raises
    ConflictError naming both revisions; expected_revision=0 means absent."""
    store = VersionedStore(client, prefix)
    rev1 = await store.compare_and_set("k", "a", expected_revision=0)
    rev2 = await store.compare_and_set("k", "b", expected_revision=rev1)
    assert rev2 > rev1
    with pytest.raises(ConflictError) as info:
        await store.compare_and_set("k", "c", expected_revision=rev1)
    assert (info.value.expected_revision, info.value.actual_revision) == (rev1, rev2)
    with pytest.raises(ConflictError):
        await store.compare_and_set("k", "c", expected_revision=0)
    got = await store.get("k")
    assert got is not None and (got.value, got.mod_revision, got.create_revision, got.version) == (
        b"b", rev2, rev1, 2,
    )


async def test_store_fenced_write_rejected_after_lock_release(
    client: EtcdClient, other: EtcdClient, prefix: str
) -> None:
    """A write fenced by a released lock's token raises FencedError with the fence key's
    current create revision as current_token (0: gone; the new token when the same
    session took the lock again); the new holder's fence works."""
    store = VersionedStore(client, prefix)
    async with Session(client, ttl_s=10) as s1, Session(other, ttl_s=10) as s2:
        lock = Lock(s1, prefix + "L")
        await lock.acquire(timeout_s=5)
        fence = lock.fence
        rev = await store.create("guarded", "1", fence=fence)
        rev = await store.compare_and_set("guarded", "2", expected_revision=rev, fence=fence)
        await lock.release()
        with pytest.raises(FencedError) as info:
            await store.compare_and_set("guarded", "3", expected_revision=rev, fence=fence)
        assert (info.value.token, info.value.current_token) == (fence.token, 0)
        assert info.value.fence_key == fence.key
        # the same session holds again: same key, new create revision, new token
        token2 = await lock.acquire(timeout_s=5)
        assert lock.fence.key == fence.key and token2 > fence.token
        with pytest.raises(FencedError) as info:
            await store.compare_and_set("guarded", "3", expected_revision=rev, fence=fence)
        assert info.value.current_token == token2
        await lock.release()
        successor = Lock(s2, prefix + "L")
        await successor.acquire(timeout_s=5)
        with pytest.raises(FencedError):
            await store.delete("guarded", fence=fence)
        # with a current fence a stale revision is a plain conflict
        with pytest.raises(ConflictError):
            await store.compare_and_set("guarded", "4", expected_revision=rev - 1, fence=successor.fence)
        await store.compare_and_set("guarded", "4", expected_revision=rev, fence=successor.fence)
        await successor.release()
    got = await store.get("guarded")
    assert got is not None and got.value == b"4"


async def test_store_delete_with_expected_revision(client: EtcdClient, prefix: str) -> None:
    """delete(expected_revision=...) deletes only at that revision; plain delete reports
    whether anything was deleted."""
    store = VersionedStore(client, prefix)
    rev = await store.create("k", "v")
    with pytest.raises(ConflictError) as info:
        await store.delete("k", expected_revision=rev + 1000)
    assert info.value.actual_revision == rev
    assert await store.get("k") is not None
    assert await store.delete("k", expected_revision=rev) is True
    assert await store.get("k") is None
    assert await store.delete("k") is False


async def test_global_ids_unique_and_increasing(client: EtcdClient, other: EtcdClient, prefix: str) -> None:
    """4 concurrent tasks (two clients) x 50 IDs: all 200 unique, each task's strictly
    increasing."""
    per_task: list[list[int]] = [[] for _ in range(4)]

    async def take(ids: GlobalIds, out: list[int]) -> None:
        for _ in range(50):
            out.append(await ids.next())

    async with asyncio.timeout(30), asyncio.TaskGroup() as tg:
        for i, out in enumerate(per_task):
            tg.create_task(take(GlobalIds((client, other)[i % 2], prefix + "ids"), out))
    every = [i for out in per_task for i in out]
    assert len(set(every)) == 200
    for out in per_task:
        assert out == sorted(out) and len(set(out)) == 50
    later = await GlobalIds(client, prefix + "ids").next()
    assert later > max(every)


async def test_propose_value_returns_the_committed_revision(
    client: EtcdClient, other: EtcdClient, prefix: str
) -> None:
    """propose_value returns the revision the value committed at (another client reads
    that mod_revision); with a stale fence it raises FencedError and writes nothing."""
    rev = await propose_value(client, prefix + "p", b"one")
    (kv,) = (await other.get(prefix + "p")).kvs
    assert (kv.value, kv.mod_revision) == (b"one", rev)
    async with Session(client, ttl_s=10) as session:
        election = Election(session, prefix + "e")
        fence = await election.campaign("x")
        rev2 = await propose_value(client, prefix + "p", "two", fence=fence)
        assert rev2 > rev
        (kv,) = (await other.get(prefix + "p")).kvs
        assert (kv.value, kv.mod_revision) == (b"two", rev2)
        await election.resign()
        with pytest.raises(FencedError):
            await propose_value(client, prefix + "p", "three", fence=fence)
        (kv,) = (await other.get(prefix + "p")).kvs
        assert (kv.value, kv.mod_revision) == (b"two", rev2)


async def test_has_quorum_false_within_deadline_after_majority_killed(etcd_cluster: LocalEtcdCluster) -> None:
    """has_quorum is True on a healthy 3-member cluster and False, within its deadline,
    once 2 of the 3 members are SIGKILLed."""
    async with EtcdClient(etcd_cluster.endpoints, timeout_s=2.0, retry_deadline_s=3.0) as client:
        assert await has_quorum(client, timeout_s=2.0)
        for member in etcd_cluster.members[1:]:
            await member.akill()
        loop = asyncio.get_running_loop()
        timings = []
        for _ in range(3):
            started = loop.time()
            assert await has_quorum(client, timeout_s=1.0) is False
            timings.append(loop.time() - started)
        print(f"\nhas_quorum -> False in {', '.join(f'{t:.3f}s' for t in timings)} (deadline 1s)")
        assert max(timings) < 1.0 + 0.3
        assert etcd_cluster.members[0].is_running


# -- bad input -----------------------------------------------------------------------


def _bad_inputs(
    session: Session, client: EtcdClient, prefix: str
) -> list[tuple[str, Callable[[], Awaitable[Any] | Any]]]:
    store = VersionedStore(client, prefix)
    election = Election(session, prefix + "ok")
    lock = Lock(session, prefix + "ok")
    fence = Fence(f"{prefix}ok/1".encode(), 1)
    k = prefix + "k"
    return [
        ("name", lambda: Lock(session, "")),
        ("name", lambda: Lock(session, "/")),
        ("name", lambda: Lock(session, b"")),
        ("name", lambda: Lock(session, 7)),  # type: ignore[arg-type]
        ("name", lambda: Lock(session, None)),  # type: ignore[arg-type]
        ("name", lambda: Election(session, "")),
        ("name", lambda: Election(session, ["a"])),  # type: ignore[arg-type]
        ("target", lambda: Lock("orders", "x")),  # type: ignore[arg-type]
        ("session", lambda: Election(client, "x")),  # type: ignore[arg-type]
        ("ttl_s", lambda: Lock(client, "x", ttl_s=0)),
        ("ttl_s", lambda: Lock(client, "x", ttl_s=-5)),
        ("value", lambda: Lock(session, "x", value=5)),  # type: ignore[arg-type]
        ("value", lambda: election.campaign(5)),  # type: ignore[arg-type]
        ("value", lambda: election.campaign(None)),  # type: ignore[arg-type]
        ("value", lambda: election.proclaim(1.5)),  # type: ignore[arg-type]
        ("value", lambda: store.create("k", 5)),  # type: ignore[arg-type]
        ("value", lambda: store.compare_and_set("k", {}, expected_revision=0)),  # type: ignore[arg-type]
        ("value", lambda: propose_value(client, k, 5)),  # type: ignore[arg-type]
        ("key", lambda: store.create(5, "v")),  # type: ignore[arg-type]
        ("key", lambda: propose_value(client, "", "v")),
        ("expected_revision", lambda: store.compare_and_set("k", "v", expected_revision=-1)),
        ("expected_revision", lambda: store.compare_and_set("k", "v", expected_revision="1")),  # type: ignore[arg-type]
        ("fence", lambda: store.create("k", "v", fence="tok")),  # type: ignore[arg-type]
        ("fence", lambda: store.create("k", "v", fence=5)),  # type: ignore[arg-type]
        ("fence", lambda: store.compare_and_set("k", "v", expected_revision=1, fence=[fence, 3])),  # type: ignore[list-item]
        ("fence", lambda: store.delete("k", fence=object())),  # type: ignore[arg-type]
        ("fence", lambda: propose_value(client, k, "v", fence=5)),  # type: ignore[arg-type]
        ("fence", lambda: propose_value(client, k, "v", fence=[])),
        ("timeout_s", lambda: lock.acquire(timeout_s=0)),
        ("timeout_s", lambda: lock.acquire(timeout_s=-1)),
        ("timeout_s", lambda: election.campaign("v", timeout_s=0)),
        ("timeout_s", lambda: election.campaign("v", timeout_s=-2.5)),
        ("timeout_s", lambda: has_quorum(client, timeout_s=0)),
        ("timeout_s", lambda: has_quorum(client, timeout_s=-1)),
    ]


async def test_bad_input_raises_config_error_naming_the_field(client: EtcdClient, prefix: str) -> None:
    """Empty names, wrong types for names/values/keys/fences/revisions and non-positive
    timeouts raise ConfigError (a ValueError) naming the field, and write nothing."""
    async with Session(client, ttl_s=10) as session:
        failures = []
        for field, call in _bad_inputs(session, client, prefix):
            try:
                result = call()
                if asyncio.iscoroutine(result):
                    await result
            except ConfigError as exc:
                assert isinstance(exc, ValueError)
                if exc.field != field:
                    failures.append(f"{field}: ConfigError named {exc.field!r}: {exc}")
            except Exception as exc:
                failures.append(f"{field}: {type(exc).__name__}: {exc}")
            else:
                failures.append(f"{field}: no error")
        assert not failures, "\n".join(failures)
    assert await keys_under(client, prefix) == []
