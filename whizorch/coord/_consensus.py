"""The consensus service of the orchestrator spec, on etcd: ProposeValue, HasQuorum."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from whizorch.coord._queue import Fence, fence_list
from whizorch.errors import ConfigError, EtcdError, FencedError
from whizorch.etcd import EtcdClient, KeyLike, Op, key_bytes, to_bytes

__all__ = ["has_quorum", "propose_value"]


async def propose_value(
    client: EtcdClient,
    key: KeyLike,
    value: KeyLike,
    *,
    fence: Fence | Sequence[Fence] | None = None,
    lease: int = 0,
) -> int:
    """Commit ``value`` at ``key`` through etcd's Raft; return the committed revision.

    With ``fence`` the write is rejected (:class:`FencedError`) unless the fence is
    still current.
    """
    k, v = key_bytes(key), to_bytes(value, "value")
    if fence is None:
        return (await client.put(k, v, lease=lease)).header.revision
    fences = fence_list(fence)
    if not fences:
        raise ConfigError("fence must be a Fence or a non-empty list of Fences", field="fence", value=fence)
    res = await client.txn([f.compare() for f in fences], [Op.put(k, v, lease=lease)])
    if not res.succeeded:
        raise FencedError("proposal rejected: the fencing token is no longer current", key=k)
    return res.header.revision


async def has_quorum(client: EtcdClient, *, timeout_s: float = 1.0) -> bool:
    """True when a linearizable read completes within ``timeout_s``.

    A linearizable read needs a leader that confirms its leadership with a quorum
    (ReadIndex), so success proves the cluster had a quorum during the call.
    """
    if timeout_s <= 0:
        raise ConfigError("timeout_s must be positive", field="timeout_s", value=timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            await client.get(b"whizorch/quorum-probe", count_only=True, timeout_s=timeout_s)
        return True
    except (TimeoutError, EtcdError):
        return False
