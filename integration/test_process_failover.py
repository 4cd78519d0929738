"""Leader failover between candidate processes (``python -m whizorch.demo.candidate``).

Each candidate is its own process on real etcd, printing JSON lines (campaigning,
leader, write, lost, late_write). The tests kill or pause the leader's process, or cut
it from etcd by pausing the one member it talks to, and check that another candidate
takes over within the lease TTL, that the old leader learns it lost, and that etcd
rejects every write the old leader makes with its old fence: the state key's history
shows no write by the old leader after the new leader's term began.

Times are measured from the signal to the ``t`` (wall clock) the child stamped on the
event, and printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from _children import Child, children
from _history import deleted_at, writes

from whizorch import EtcdClient
from whizorch.testing import LocalEtcdCluster, eventually_async

TTL = 2
"""The candidates' lease TTL (seconds): small, so that failover is quick to test."""

pytestmark = [pytest.mark.etcd34, pytest.mark.slow]


class Candidates:
    """Starts candidate processes; every one is killed after the test."""

    def __init__(self, started: list[Child]) -> None:
        self._started = started

    async def start(self, ident: str, endpoints: Sequence[str], name: str) -> Child:
        """Start a candidate that campaigns once for ``name`` (``--once``)."""
        argv = [
            sys.executable, "-m", "whizorch.demo.candidate",
            "--endpoints", ",".join(endpoints),
            "--id", ident,
            "--ttl", str(TTL),
            "--name", name,
            "--once",
        ]  # fmt: skip
        child = await Child.start(ident, argv)
        self._started.append(child)
        return child


@pytest.fixture
async def candidates() -> AsyncIterator[Candidates]:
    """Start candidate processes; they are resumed and killed after the test."""
    async with children() as started:
        yield Candidates(started)


async def _queued(client: EtcdClient, name: str, keys: int) -> None:
    """Wait until ``keys`` candidates are queued in the election (the follower waits)."""

    async def check() -> None:
        res = await client.get(name + "/", prefix=True, count_only=True)
        assert res.count == keys

    await eventually_async(check, timeout=20)


async def _leader_and_follower(
    candidates: Candidates, client: EtcdClient, name: str, endpoints: tuple[Sequence[str], ...]
) -> tuple[Child, dict[str, Any], Child]:
    """Start ``old`` (it leads and writes) then ``new`` (it waits in line behind)."""
    old = await candidates.start("old", endpoints[0], name)
    elected = await old.next_event("leader", 30)
    await old.next_event("write", 10)
    new = await candidates.start("new", endpoints[-1], name)
    await new.next_event("campaigning", 30)
    await _queued(client, name, 2)
    return old, elected, new


async def _state_history(
    client: EtcdClient, key: str, since: int
) -> list[tuple[int, dict[str, Any]]]:
    """Every value written to ``key`` from revision ``since`` to now: (revision, value)."""
    return [(kv.mod_revision, json.loads(kv.value)) for kv in await writes(client, key, since=since)]


async def _term_ended_at(client: EtcdClient, name: str, elected: dict[str, Any]) -> int:
    """The revision at which the leader key of ``elected`` was deleted (its lease ended).

    The new leader's term begins there: its own key was created earlier, when it
    queued behind the old leader.
    """
    return await deleted_at(client, f"{name}/{elected['lease']:x}", since=elected["term"])


async def _assert_fenced_history(
    client: EtcdClient, name: str, elected: dict[str, Any], old: Child, took: dict[str, Any]
) -> None:
    """Until the old leader key was deleted only the old leader wrote the state key;
    from then on only the new one did (etcd's own history of the key)."""
    ended = await _term_ended_at(client, name, elected)
    assert elected["term"] < took["term"] < ended
    history = await _state_history(client, name + "-state", elected["term"])
    assert not [v for _, v in history if v.get("stale")], history
    after = [(rev, v) for rev, v in history if rev > ended and v["leader"] != "new"]
    assert not after, f"written after the old term ended ({ended}) not by the new leader: {after}"
    before = [(rev, v) for rev, v in history if rev < ended and v["leader"] != "old"]
    assert not before, (
        f"written before the old term ended ({ended}) not by the old leader: {before}"
    )
    assert any(v["leader"] == "new" for _, v in history), history
    # the old leader's own account agrees: every write it saw succeed was before
    accepted = [w["revision"] for w in old.events("write") if w["ok"]]
    assert accepted and max(accepted) < ended, (accepted, ended)


def _report(what: str, seconds: float) -> None:
    print(f"\n[failover] {what}: {seconds:.3f}s (TTL {TTL}s)")


async def test_leader_killed_the_waiting_candidate_leads(
    client: EtcdClient, prefix: str, etcd_endpoints: list[str], candidates: Candidates
) -> None:
    """The leader's process SIGKILLed: the waiting candidate leads, in a later term (how
    long it took is printed: about the TTL, more on a slow machine)."""
    name = prefix + "leader"
    old, elected, new = await _leader_and_follower(
        candidates, client, name, (etcd_endpoints, etcd_endpoints)
    )
    killed_at = time.time()
    old.send(signal.SIGKILL)
    took = await new.next_event("leader", TTL + 30)
    _report("SIGKILL -> new leader", took["t"] - killed_at)  # a figure: no bound
    assert took["term"] > elected["term"]


async def test_paused_leader_is_replaced_and_fenced(
    client: EtcdClient, prefix: str, etcd_endpoints: list[str], candidates: Candidates
) -> None:
    """The leader paused (SIGSTOP) past its TTL: another takes over; resumed, the old one
    reports "lost" and its late write fails with FencedError; etcd's history of the state
    key shows no write by the old leader after the new term began."""
    name = prefix + "leader"
    old, elected, new = await _leader_and_follower(
        candidates, client, name, (etcd_endpoints, etcd_endpoints)
    )
    paused_at = time.time()
    old.send(signal.SIGSTOP)
    took = await new.next_event("leader", TTL + 10)
    _report("SIGSTOP -> new leader", took["t"] - paused_at)
    await new.next_event("write", 10)

    old.send(signal.SIGCONT)
    lost = await old.next_event("lost", 10)
    late = await old.next_event("late_write", 10)
    assert lost["reason"], old.describe()
    assert late["ok"] is False and late["error"] == "FencedError", old.describe()
    assert late["current_token"] == 0  # the old leader key went with its lease
    await _assert_fenced_history(client, name, elected, old, took)


async def test_leader_cut_from_etcd_steps_down_before_ttl(
    etcd_cluster: LocalEtcdCluster, candidates: Candidates
) -> None:
    """The leader's only etcd member paused: the leader reports "lost" before its TTL
    could run out at the server, the other candidate (on the other members) takes over,
    and once the member is back the old leader's late write fails with FencedError."""
    raft_leader = etcd_cluster.wait_leader()
    # cut a follower: pausing the Raft leader would elect another, and a new Raft leader
    # extends every lease, which would delay the takeover for reasons not tested here
    cut = next(m for m in etcd_cluster.members if m is not raft_leader)
    others = [m.endpoint for m in etcd_cluster.members if m is not cut]
    name = "failover/leader"
    async with EtcdClient(others, timeout_s=3.0, retry_deadline_s=5.0) as client:
        old, elected, new = await _leader_and_follower(
            candidates, client, name, ([cut.endpoint], others)
        )
        paused_at = time.time()
        await asyncio.to_thread(cut.pause)
        lost = await old.next_event("lost", TTL + 10)
        took = await new.next_event("leader", TTL + 10)
        _report("member paused -> old leader reports lost", lost["t"] - paused_at)
        _report("member paused -> new leader", took["t"] - paused_at)  # a figure: no bound
        assert lost["t"] - paused_at < TTL, old.describe()  # on its own clock: the promise
        assert lost["t"] <= took["t"]
        await new.next_event("write", 10)

        await asyncio.to_thread(cut.resume)
        late = await old.next_event("late_write", 20)
        assert late["ok"] is False and late["error"] == "FencedError", old.describe()
        assert late["current_token"] == 0  # the old leader key went with its lease
        await _assert_fenced_history(client, name, elected, old, took)
