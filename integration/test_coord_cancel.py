"""Cancellation and timeouts of the coordination primitives leave nothing behind.

Each test cancels (or times out) an operation midway against real etcd, then checks
that no key of the cancelled party remains, that an own session's lease is revoked
(the cluster's lease list is back to what it was) and that no task of it is left
running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from _coord import cancel_and_wait, coord_tasks, keys_under, leases, wait_keys

from whizorch import (
    ClosedError,
    Election,
    EtcdClient,
    Lock,
    LockTimeoutError,
    Session,
)
from whizorch.testing import LocalEtcdCluster, eventually_async

# -- cancelled while waiting behind a holder ------------------------------------------


@pytest.mark.etcd34
async def test_cancel_lock_acquire_while_waiting(client: EtcdClient, other: EtcdClient, prefix: str) -> None:
    """Cancelling acquire() while it waits behind a holder deletes the waiter's key
    before the task ends; its session lives on and can take the lock later."""
    name = prefix + "lock"
    async with Session(client, ttl_s=10) as holder_s, Session(client, ttl_s=10) as waiter_s:
        holder, waiter = Lock(holder_s, name), Lock(waiter_s, name)
        await holder.acquire(timeout_s=5)
        task = asyncio.create_task(waiter.acquire())
        await wait_keys(other, name + "/", 2)
        await cancel_and_wait(task)
        (kv,) = await keys_under(other, name + "/")
        assert kv.lease == holder_s.lease_id
        assert not waiter.is_held and not waiter_s.is_lost
        await holder.release()
        await waiter.acquire(timeout_s=5)
        await waiter.release()
        assert await keys_under(other, name + "/") == []


@pytest.mark.etcd34
async def test_cancel_own_session_lock_acquire_while_waiting(
    client: EtcdClient, other: EtcdClient, prefix: str
) -> None:
    """Cancelling an own-session Lock's acquire() while it waits deletes its key and
    revokes its lease: the lease list is back to what it was before it started."""
    name = prefix + "own"
    async with Lock(client, name, ttl_s=10) as holder:
        before = await leases(other)
        waiter = Lock(client, name, ttl_s=10)
        task = asyncio.create_task(waiter.acquire())
        await wait_keys(other, name + "/", 2)
        waiter_lease = (await keys_under(other, name + "/"))[1].lease
        assert waiter_lease not in before
        await cancel_and_wait(task)
        (kv,) = await keys_under(other, name + "/")
        assert holder.session is not None and kv.lease == holder.session.lease_id
        assert waiter_lease not in await leases(other)
        assert await leases(other) == before
        assert waiter.session is None and not waiter.is_held
    assert await keys_under(other, name + "/") == []
    assert coord_tasks() == []


@pytest.mark.etcd34
async def test_cancel_campaign_while_waiting(client: EtcdClient, other: EtcdClient, prefix: str) -> None:
    """Cancelling campaign() while another candidate leads deletes the candidate's key;
    the same Election can campaign again and win later."""
    name = prefix + "elect"
    async with Session(client, ttl_s=10) as s1, Session(client, ttl_s=10) as s2:
        leader, candidate = Election(s1, name), Election(s2, name)
        await leader.campaign("leader")
        task = asyncio.create_task(candidate.campaign("candidate"))
        await wait_keys(other, name + "/", 2)
        await cancel_and_wait(task)
        (kv,) = await keys_under(other, name + "/")
        assert (kv.lease, kv.value) == (s1.lease_id, b"leader")
        assert not candidate.is_leader and leader.is_leader
        again = asyncio.create_task(candidate.campaign("candidate"))
        await wait_keys(other, name + "/", 2)
        await leader.resign()
        async with asyncio.timeout(5):
            await again
        assert candidate.is_leader
        await candidate.resign()
    assert await keys_under(other, name + "/") == []
    assert coord_tasks() == []


async def test_cancel_lock_acquire_right_after_it_starts(
    client: EtcdClient, other: EtcdClient, prefix: str
) -> None:
    """Cancelled at each of its first suspension points (lease grant in flight, enqueue,
    wait), an own-session acquire() leaves no key and no lease once it has ended."""
    name = prefix + "early"
    async with Lock(client, name, ttl_s=10):
        before = await leases(other)
        for yields in range(12):
            waiter = Lock(client, name, ttl_s=10)
            task = asyncio.create_task(waiter.acquire())
            for _ in range(yields):
                await asyncio.sleep(0)  # ok: one loop turn, not a wait for consistency
            await cancel_and_wait(task)
            assert len(await keys_under(other, name + "/")) == 1, f"after {yields} yields"
            # a grant cancelled in flight is awaited (etcd answers in ms) and revoked
            assert await leases(other) <= before, f"after {yields} yields"
    assert coord_tasks() == []


# -- timeouts ------------------------------------------------------------------------


@pytest.mark.etcd34
async def test_lock_timeout_leaves_nothing(client: EtcdClient, other: EtcdClient, prefix: str) -> None:
    """acquire(timeout_s=...) behind a holder raises LockTimeoutError (a TimeoutError) and
    leaves neither its key nor, for an own session, its lease."""
    name = prefix + "busy"
    async with Session(client, ttl_s=10) as hs, Session(client, ttl_s=10) as ws:
        holder = Lock(hs, name)
        await holder.acquire(timeout_s=5)
        before = await leases(other)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(LockTimeoutError) as info:
            await Lock(ws, name).acquire(timeout_s=0.3)
        assert isinstance(info.value, TimeoutError)
        assert info.value.timeout_s == 0.3
        assert loop.time() - started < 0.3 + 1.0
        with pytest.raises(LockTimeoutError):
            await Lock(client, name, ttl_s=10).acquire(timeout_s=0.3)
        (kv,) = await keys_under(other, name + "/")
        assert kv.lease == hs.lease_id
        assert await leases(other) == before
        assert not ws.is_lost
        await holder.release()


async def test_campaign_timeout_leaves_nothing(client: EtcdClient, other: EtcdClient, prefix: str) -> None:
    """campaign(timeout_s=...) behind a leader raises LockTimeoutError and deletes the
    candidate's key."""
    name = prefix + "slow"
    async with Session(client, ttl_s=10) as s1, Session(client, ttl_s=10) as s2:
        leader = Election(s1, name)
        await leader.campaign("leader")
        candidate = Election(s2, name)
        with pytest.raises(LockTimeoutError):
            await candidate.campaign("candidate", timeout_s=0.3)
        (kv,) = await keys_under(other, name + "/")
        assert kv.lease == s1.lease_id
        assert not candidate.is_leader
        await leader.resign()


# -- cancelled while closing, releasing or resigning ----------------------------------


@pytest.mark.etcd34
async def test_cancel_session_close_still_revokes(client: EtcdClient, other: EtcdClient, prefix: str) -> None:
    """A close() cancelled at its first suspension still revokes the lease (its keys go
    with it), sets `lost` and stops the keepalive task."""
    session = await Session(client, ttl_s=30).open()
    await client.put(prefix + "leased", b"x", lease=session.lease_id)
    task = asyncio.create_task(session.close())
    await asyncio.sleep(0)  # ok: one loop turn; close() is now inside, waiting for its keepalive task
    await cancel_and_wait(task)
    assert session.lost.is_set()
    assert coord_tasks() == []

    async def revoked() -> bool:
        return await other.lease_time_to_live(session.lease_id) is None

    # the TTL is 30 s: only a revoke can make it vanish this fast
    await eventually_async(revoked, timeout=5)
    assert (await other.get(prefix + "leased")).kvs == []
    with pytest.raises(ClosedError):
        await session.open()


async def test_cancel_lock_release_still_releases(client: EtcdClient, other: EtcdClient, prefix: str) -> None:
    """A release() cancelled at its first suspension still deletes the key and revokes
    an own session's lease."""
    name = prefix + "rel"
    before = await leases(other)
    lock = Lock(client, name, ttl_s=30)
    await lock.acquire(timeout_s=5)
    task = asyncio.create_task(lock.release())
    await asyncio.sleep(0)  # ok: one loop turn, not a wait for consistency
    await cancel_and_wait(task)
    assert not lock.is_held

    async def released() -> bool:
        return await keys_under(other, name + "/") == [] and await leases(other) <= before

    await eventually_async(released, timeout=5)
    assert coord_tasks() == []


@pytest.mark.etcd34
async def test_cancel_resign_still_resigns(client: EtcdClient, other: EtcdClient, prefix: str) -> None:
    """A resign() cancelled at its first suspension still deletes the leader key and
    ends the leadership."""
    name = prefix + "resign"
    async with Session(client, ttl_s=30) as session:
        election = Election(session, name)
        await election.campaign("leader")
        task = asyncio.create_task(election.resign())
        await asyncio.sleep(0)  # ok: one loop turn; resign() is now stopping the leadership monitor
        await cancel_and_wait(task)
        assert not election.is_leader and election.lost.is_set()

        async def resigned() -> bool:
            return await keys_under(other, name + "/") == []

        await eventually_async(resigned, timeout=5)
        assert not session.is_lost
        assert [t.get_name() for t in coord_tasks()] == [f"whizorch-session-{session.lease_id:x}"]
    assert coord_tasks() == []


# -- cancelled while opening against a frozen etcd ------------------------------------


async def test_cancel_session_open_in_flight(etcd_cluster_factory: Callable[..., LocalEtcdCluster]) -> None:
    """While etcd holds the lease grant (SIGSTOP), a cancelled open() leaves the Session
    unopened with no keepalive, an own-session acquire(timeout_s=...) raises
    LockTimeoutError soon after its timeout, and any lease the grants still make (no
    keys) expires within its TTL."""
    cluster = etcd_cluster_factory(size=1)
    member = cluster.members[0]
    ttl = 2
    async with EtcdClient(cluster.endpoints, timeout_s=3.0, retry_deadline_s=3.0) as client:
        before = await leases(client)
        session = Session(client, ttl_s=ttl)
        cancelled_lock, timed_lock = Lock(client, "cancel-open/a", ttl_s=ttl), Lock(client, "cancel-open/b", ttl_s=ttl)
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(member.pause)
        try:
            opening = asyncio.create_task(session.open())
            acquiring = asyncio.create_task(cancelled_lock.acquire())
            started = loop.time()
            with pytest.raises(LockTimeoutError):
                await timed_lock.acquire(timeout_s=0.5)
            took = loop.time() - started
            await cancel_and_wait(opening)
            await cancel_and_wait(acquiring)
        finally:
            await asyncio.to_thread(member.resume)
        # the timeout lets the grant answer for up to 0.5 s, to revoke the lease it made
        assert took < 0.5 + 0.5 + 0.5
        assert coord_tasks() == []
        with pytest.raises(ClosedError):
            session.check()
        assert not cancelled_lock.is_held and not timed_lock.is_held
        assert cancelled_lock.session is None and timed_lock.session is None
        orphans = await leases(client) - before
        print(f"\nacquire timed out after {took:.3f}s; leases granted by the cancelled opens: {len(orphans)}")
        for lease in orphans:
            info = await client.lease_time_to_live(lease, keys=True)
            assert info is None or info.keys == ()

        async def expired() -> bool:
            return await leases(client) <= before

        await eventually_async(expired, timeout=ttl + 5)
        assert await keys_under(client, "cancel-open/") == []
