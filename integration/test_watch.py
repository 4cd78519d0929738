"""Watches against real etcd: order, prefix, prev_kv, history, compaction, multiplexing,
and a member killed under an open watch."""

from __future__ import annotations

import asyncio
import time

import pytest

from whizorch import CompactedError, EtcdClient
from whizorch.etcd import Compare, EventType, Op, Watch, WatchEvent
from whizorch.testing import EtcdMember, LocalEtcdCluster, eventually_async


async def take(watch: Watch, n: int, timeout: float = 10.0) -> list[WatchEvent]:
    """The next ``n`` events of ``watch``, failing the test if they take too long."""
    async with asyncio.timeout(timeout):
        return [await anext(watch) for _ in range(n)]


async def assert_next_is(client: EtcdClient, watch: Watch, key: str) -> None:
    """Nothing more is pending on ``watch``: a fresh write to ``key`` is its next event."""
    rev = (await client.put(key, "sentinel")).header.revision
    (ev,) = await take(watch, 1)
    assert (ev.kv.key, ev.revision) == (key.encode(), rev)


# -- on the shared cluster -----------------------------------------------------------


@pytest.mark.etcd34
async def test_events_arrive_in_revision_order_with_their_types(
    client: EtcdClient, prefix: str
) -> None:
    """A key's puts and delete arrive once each, in order, with the revisions the writes
    returned; the watch starts 'from now'."""
    key = prefix + "k"
    await client.put(key, "before")  # before the watch: not delivered
    async with client.watch(key) as w:
        await w.wait_created()
        revs = [
            (await client.put(key, "v1")).header.revision,
            (await client.put(key, "v2")).header.revision,
            (await client.delete(key)).header.revision,
        ]
        events = await take(w, 3)
        assert [e.type for e in events] == [EventType.PUT, EventType.PUT, EventType.DELETE]
        assert [e.kv.value for e in events] == [b"v1", b"v2", b""]
        assert [e.revision for e in events] == revs
        assert all(e.prev_kv is None for e in events)
        assert w.last_revision == revs[-1]
        await assert_next_is(client, w, key)


@pytest.mark.etcd34
async def test_prefix_watch_sees_only_its_prefix(client: EtcdClient, prefix: str) -> None:
    """A prefix watch delivers changes to keys under the prefix and nothing else."""
    async with client.watch(prefix + "a/", prefix=True) as w:
        await w.wait_created()
        for name in ("a/1", "b/1", "a", "ab", "a/2", "a/1"):
            await client.put(prefix + name, name)
        await client.delete(prefix + "a/", prefix=True)
        events = await take(w, 5)
        assert [(e.type, e.kv.key.decode()[len(prefix) :]) for e in events] == [
            (EventType.PUT, "a/1"),
            (EventType.PUT, "a/2"),
            (EventType.PUT, "a/1"),
            (EventType.DELETE, "a/1"),
            (EventType.DELETE, "a/2"),
        ]
        # a prefix delete is one revision for both keys
        assert events[3].revision == events[4].revision
        await assert_next_is(client, w, prefix + "a/3")


@pytest.mark.etcd34
async def test_every_event_of_a_multi_key_revision_is_delivered(
    client: EtcdClient, prefix: str
) -> None:
    """A txn writing several keys (one revision, several events) delivers every event."""
    async with client.watch(prefix, prefix=True) as w:
        await w.wait_created()
        done = await client.txn([], [Op.put(f"{prefix}t/{i}", str(i)) for i in range(3)])
        await client.put(prefix + "after", "x")
        events = await take(w, 4)
        assert [e.kv.key for e in events[:3]] == [f"{prefix}t/{i}".encode() for i in range(3)]
        assert {e.revision for e in events[:3]} == {done.header.revision}
        assert events[3].kv.key == (prefix + "after").encode()


@pytest.mark.etcd34
async def test_prev_kv_carries_the_previous_value(client: EtcdClient, prefix: str) -> None:
    """With prev_kv, each event carries the key's value before the change (None on create)."""
    key = prefix + "p"
    async with client.watch(key, prev_kv=True) as w:
        await w.wait_created()
        await client.put(key, "one")
        await client.put(key, "two")
        await client.delete(key)
        create, update, delete = await take(w, 3)
        assert create.prev_kv is None
        assert update.prev_kv is not None and update.prev_kv.value == b"one"
        assert delete.type is EventType.DELETE
        assert delete.prev_kv is not None and delete.prev_kv.value == b"two"
        assert delete.prev_kv.mod_revision == update.revision


@pytest.mark.etcd34
async def test_start_revision_in_the_past_replays_history(client: EtcdClient, prefix: str) -> None:
    """A watch from an old revision replays every change since, in order, then goes live."""
    revs = [(await client.put(f"{prefix}h/{i}", str(i))).header.revision for i in range(5)]
    await client.put(prefix + "elsewhere", "x")  # outside the prefix: not replayed
    async with client.watch(prefix + "h/", prefix=True, start_revision=revs[1]) as w:
        events = await take(w, 4)
        assert [e.revision for e in events] == revs[1:]
        assert [e.kv.value for e in events] == [b"1", b"2", b"3", b"4"]
        await assert_next_is(client, w, prefix + "h/live")


@pytest.mark.etcd34
async def test_watch_from_a_compacted_revision_raises_compacted_error(
    client: EtcdClient, prefix: str
) -> None:
    """A watch that needs compacted history ends with CompactedError carrying
    compact_revision; re-reading and watching from the read's revision + 1 recovers."""
    key = prefix + "c"
    old = (await client.put(key, "1")).header.revision
    await client.put(key, "2")
    head = (await client.put(key, "3")).header.revision
    await client.compact(head)
    async with client.watch(key, start_revision=old) as w:
        with pytest.raises(CompactedError) as caught:
            await take(w, 1)
        with pytest.raises(CompactedError):  # it stays ended
            await take(w, 1)
    err = caught.value
    assert err.compact_revision == head
    assert err.requested_revision == old
    assert str(head) in str(err)

    read = await client.get(key)
    assert read.first is not None and read.first.value == b"3"
    async with client.watch(key, start_revision=read.header.revision + 1) as w:
        await assert_next_is(client, w, key)


@pytest.mark.etcd34
async def test_many_watches_on_one_client_each_get_their_own_events(
    client: EtcdClient, prefix: str
) -> None:
    """Many watches opened at once on one client (one multiplexed stream) each receive
    exactly the events of their own key, in order."""
    n = 30
    watches = [client.watch(f"{prefix}m/{i:02}") for i in range(n)]
    await asyncio.gather(*(w.__aenter__() for w in watches))
    try:
        await asyncio.gather(*(w.wait_created() for w in watches))
        for value in ("a", "b"):
            # interleave the keys so each watch's events are spread over the stream
            await asyncio.gather(*(client.put(f"{prefix}m/{i:02}", value) for i in range(n)))
        for i, w in enumerate(watches):
            events = await take(w, 2)
            assert {e.kv.key for e in events} == {f"{prefix}m/{i:02}".encode()}
            assert [e.kv.value for e in events] == [b"a", b"b"]
            assert events[0].revision < events[1].revision
    finally:
        for w in watches:
            await w.aclose()


@pytest.mark.etcd34
async def test_cancelling_one_watch_leaves_the_others_working(
    client: EtcdClient, prefix: str
) -> None:
    """Closing one of several watches (two on the same key) ends only its iteration; the
    others keep receiving, and new watches can still be added."""
    key = prefix + "x"
    async with client.watch(key) as same, client.watch(prefix, prefix=True) as wide:
        doomed = client.watch(key)
        async with doomed:
            await asyncio.gather(same.wait_created(), wide.wait_created(), doomed.wait_created())
            await client.put(key, "1")
            for w in (same, wide, doomed):
                (ev,) = await take(w, 1)
                assert ev.kv.value == b"1"
        await client.put(key, "2")
        with pytest.raises(StopAsyncIteration):
            await take(doomed, 1)
        for w in (same, wide):
            (ev,) = await take(w, 1)
            assert ev.kv.value == b"2"
        async with client.watch(key) as late:
            await late.wait_created()
            await client.put(key, "3")
            for w in (same, wide, late):
                (ev,) = await take(w, 1)
                assert ev.kv.value == b"3"


# -- with members killed -------------------------------------------------------------


async def _pick(cluster: LocalEtcdCluster, role: str) -> tuple[EtcdMember, list[EtcdMember]]:
    leader = await cluster.await_leader()
    watched = leader if role == "leader" else next(m for m in cluster.members if m is not leader)
    return watched, [m for m in cluster.members if m is not watched]


@pytest.mark.etcd34
@pytest.mark.slow
@pytest.mark.parametrize("role", ["follower", "leader"])
async def test_a_member_killed_and_restarted_under_a_watch_loses_and_repeats_nothing(
    etcd_cluster: LocalEtcdCluster, role: str
) -> None:
    """While a writer on other endpoints puts N keys, the member serving the watch stream
    is SIGKILLed and restarted: the watch resumes elsewhere and delivers exactly the N
    revisions, in order, none twice."""
    n = 300
    watched, others = await _pick(etcd_cluster, role)
    written = 0

    async with (
        EtcdClient(
            [watched.endpoint, *(m.endpoint for m in others)], timeout_s=2.0, connect_timeout_s=0.5
        ) as watching,
        EtcdClient(
            [m.endpoint for m in others],
            timeout_s=2.0,
            connect_timeout_s=0.5,
            retry_deadline_s=15.0,
        ) as writer,
    ):

        async def write_all() -> None:
            nonlocal written
            for i in range(n):
                key = f"kr/{i:04}"
                # create-if-absent is safe to resend: the writer never writes a key twice,
                # even when a leader change loses an answer
                await writer.txn(
                    [Compare.create_revision(key, "==", 0)], [Op.put(key, str(i))], idempotent=True
                )
                written = i + 1

        async with watching.watch("kr/", prefix=True) as w:
            await w.wait_created()
            assert watching.endpoint == watched.endpoint  # the stream is on the victim
            received: list[WatchEvent] = []

            async def receive() -> None:
                async for ev in w:
                    received.append(ev)
                    if len(received) == n:
                        return

            receiver = asyncio.create_task(receive())
            writing = asyncio.create_task(write_all())
            try:
                await eventually_async(lambda: written >= n // 3, timeout=30)
                await watched.akill()
                await eventually_async(lambda: written >= 2 * n // 3, timeout=30)
                await watched.astart()
                async with asyncio.timeout(60):
                    await writing
                    await receiver
            finally:
                for task in (writing, receiver):
                    task.cancel()
                await asyncio.gather(writing, receiver, return_exceptions=True)

            assert watching.endpoint != watched.endpoint  # it did move
            final = await writer.get("kr/", prefix=True)
            expected = sorted((kv.mod_revision, kv.key) for kv in final.kvs)
            assert len(expected) == n and all(kv.version == 1 for kv in final.kvs)
            assert [(ev.revision, ev.kv.key) for ev in received] == expected
            assert all(ev.type is EventType.PUT for ev in received)
            await assert_next_is(writer, w, "kr/sentinel")


async def _wait_compacted(member: EtcdMember, key: str, revision: int) -> None:
    """Wait until ``member`` itself has applied a compaction past ``revision``."""
    async with EtcdClient(member.endpoint, timeout_s=2.0) as probe:

        async def applied() -> bool:
            try:
                await probe.get(key, revision=revision, serializable=True)
            except CompactedError:
                return True
            return False

        await eventually_async(applied, timeout=10)


@pytest.mark.etcd34
@pytest.mark.etcd34
@pytest.mark.slow
async def test_a_watch_on_a_frozen_member_moves_to_another_and_misses_nothing(
    etcd_cluster: LocalEtcdCluster,
) -> None:
    """The member serving a watch is SIGSTOPped (it keeps its connections and says
    nothing): the watch's silence check asks for progress, gets no answer, drops the
    stream and resumes on another member; what was written meanwhile arrives, once, in
    order, within watch_check_s + watch_stall_s + a reconnect."""
    watched, others = await _pick(etcd_cluster, "follower")
    async with (
        EtcdClient(
            [watched.endpoint, *(m.endpoint for m in others)], timeout_s=2.0, connect_timeout_s=0.5,
            watch_check_s=0.5, watch_stall_s=1.0,
        ) as watching,
        EtcdClient([m.endpoint for m in others], timeout_s=2.0) as other,
    ):
        async with watching.watch("fz/", prefix=True) as w:
            await w.wait_created()
            assert watching.endpoint == watched.endpoint
            first = (await other.put("fz/a", "1")).header.revision
            (ev,) = await take(w, 1)
            assert ev.revision == first
            watched.pause()
            try:
                frozen_at = time.monotonic()
                revs = [(await other.put(f"fz/b{i}", "x")).header.revision for i in range(3)]
                async with asyncio.timeout(8):
                    got = await take(w, 3)
                took = time.monotonic() - frozen_at
            finally:
                watched.resume()
            assert [e.revision for e in got] == revs
            assert watching.endpoint != watched.endpoint
            print(f"\n[watch] frozen member: events resumed elsewhere after {took:.2f}s")
            assert took < 0.5 + 1.0 + 2.0


@pytest.mark.slow
async def test_history_compacted_while_a_watch_is_cut_off_ends_it_on_resume(
    etcd_cluster: LocalEtcdCluster,
) -> None:
    """A watch whose member freezes, while the history it still needs is compacted through
    another member, ends with CompactedError when it resumes elsewhere after the member dies."""
    watched, others = await _pick(etcd_cluster, "follower")
    async with (
        EtcdClient(
            # the stall watchdog is held off, so the freeze outlasts the compaction
            [watched.endpoint, *(m.endpoint for m in others)], timeout_s=2.0, connect_timeout_s=0.5,
            watch_check_s=120.0,
        ) as watching,
        EtcdClient([m.endpoint for m in others], timeout_s=2.0) as other,
    ):
        async with watching.watch("cw/", prefix=True) as w:
            await w.wait_created()
            assert watching.endpoint == watched.endpoint
            seen = (await other.put("cw/a", "1")).header.revision
            (ev,) = await take(w, 1)
            assert ev.revision == seen

            # frozen, the member keeps its connections but sends nothing: the watch cannot
            # notice, and cannot receive what follows
            watched.pause()
            for i in range(5):
                await other.put(f"cw/b{i}", "x")
            head = (await other.put("cw/c", "x")).header.revision
            await other.compact(head)
            for member in others:  # each member applies the compaction in its own time
                await _wait_compacted(member, "cw/a", seen)
            # killed frozen: it never sends what it missed (a resume before the SIGKILL
            # once let it send everything up to head under load: no gap to report)
            await watched.akill()

            delivered: list[WatchEvent] = []
            with pytest.raises(CompactedError) as caught:
                async with asyncio.timeout(10):
                    async for event in w:
                        delivered.append(event)
            assert all(seen < e.revision < head for e in delivered)
            err = caught.value
            assert err.compact_revision == head
            assert err.requested_revision == (delivered[-1].revision if delivered else seen) + 1
            assert err.endpoint != watched.endpoint
