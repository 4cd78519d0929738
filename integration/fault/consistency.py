"""Did etcd itself stay one history? The members' KV hashes at one revision, compared.

The saga invariants assume etcd is linearizable. When an etcd member diverges (applies
the same Raft log to a different state), a client served by it sees keys, revisions and
txn outcomes the cluster does not have, and no client-side protocol can stay correct.
etcd 3.5.0-3.5.2 do this after a SIGKILL under write load (the consistent index was not
saved atomically with the data; etcd-io/etcd#13766, fixed in 3.5.3; the maintainers
advised against those versions in production). The fault suite kills etcd members, so
on those versions a seed can end with a diverged member; this check finds it, and the
suite then calls the seed's verdict void instead of charging whizorch with etcd's bug.

``etcdctl endpoint hashkv --rev R`` asks each member for the hash of its MVCC store up to
revision R (R: the lowest revision any member reports, so every member has it). Equal
hashes mean the members agree up to R; a member that skipped or re-applied an entry after
a restart numbers its revisions differently and hashes differently.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from whizorch.etcd import version_warning
from whizorch.testing import LocalEtcdCluster

__all__ = ["Divergence", "check_members", "known_bug"]

_ATTEMPTS = 5


def known_bug(version: tuple[int, int, int]) -> str | None:
    """Why this etcd version may diverge after a crash, or None when no such bug is known
    (whizorch's own list: `whizorch.etcd.version_warning`)."""
    return version_warning(".".join(map(str, version)))


@dataclass(frozen=True)
class Divergence:
    """The members' views at one revision, when they disagree."""

    revision: int
    members: dict[str, tuple[int, int, int]]
    """Member name -> (its KV hash up to ``revision``, its current revision, its Raft index)."""

    def describe(self) -> str:
        views = ", ".join(f"{n}: hash {h:#010x} rev {r} raft index {i}" for n, (h, r, i) in sorted(self.members.items()))
        return f"etcd members disagree on their KV store up to revision {self.revision} ({views})"


def _json(cluster: LocalEtcdCluster, endpoint: str, *args: str) -> dict[str, object]:
    done = cluster.etcdctl(*args, "-w", "json", endpoints=[endpoint], timeout=10.0)
    answer = json.loads(done.stdout)
    return dict(answer[0] if isinstance(answer, list) else answer)


def _compare(cluster: LocalEtcdCluster, members: dict[str, str]) -> Divergence | None:
    status = {n: _json(cluster, ep, "endpoint", "status")["Status"] for n, ep in members.items()}
    rev = min(int(s["header"]["revision"]) for s in status.values())  # type: ignore[index]
    views: dict[str, tuple[int, int, int]] = {}
    for name, ep in members.items():
        h = _json(cluster, ep, "endpoint", "hashkv", f"--rev={rev}")["HashKV"]
        views[name] = (
            int(h["hash"]),  # type: ignore[index]
            int(status[name]["header"]["revision"]),  # type: ignore[index]
            int(status[name]["raftIndex"]),  # type: ignore[index]
        )
    if len({h for h, _, _ in views.values()}) > 1:
        return Divergence(rev, views)
    return None


async def check_members(cluster: LocalEtcdCluster, members: dict[str, str] | None = None) -> Divergence | None:
    """Compare every member's KV hash at the lowest revision they all have (a few tries:
    a member just restarted by the nemesis may still be starting). ``members``: name ->
    endpoint (default: the cluster's members; etcdctl and its flags come from
    ``cluster``). Raises the last etcdctl error when the members cannot all be asked."""
    members = members if members is not None else {m.name: m.endpoint for m in cluster.members}
    last: Exception | None = None
    for _ in range(_ATTEMPTS):
        try:
            return await asyncio.to_thread(_compare, cluster, members)
        except Exception as exc:  # a member not answering yet, or an odd answer
            last = exc
            await asyncio.sleep(1.0)  # ok: giving a restarted member time to serve
    assert last is not None
    raise last
