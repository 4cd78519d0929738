"""Helpers for the coordination-primitive tests (test_coord*.py): look at etcd from
outside, wait for keys with a deadline, find leftover tasks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from whizorch import EtcdClient, Session
from whizorch.etcd import KeyValue
from whizorch.testing import eventually_async


async def keys_under(client: EtcdClient, prefix: str | bytes) -> list[KeyValue]:
    """The keys under ``prefix``, oldest (lowest create revision) first."""
    res = await client.get(prefix, prefix=True, sort_target="create", sort_order="ascend")
    return res.kvs


async def wait_keys(client: EtcdClient, prefix: str | bytes, count: int) -> list[KeyValue]:
    """Poll until exactly ``count`` keys exist under ``prefix``; return them."""
    found: list[KeyValue] = []

    async def settled() -> bool:
        found[:] = await keys_under(client, prefix)
        return len(found) == count

    await eventually_async(settled, timeout=10, message=f"{count} keys under {prefix!r}")
    return found


async def leases(client: EtcdClient) -> set[int]:
    """The cluster's lease IDs as of now.

    etcd answers LeaseLeases from the answering member's own state, which may lag the
    cluster; a linearizable read through the same client first makes that member
    apply everything committed before it.
    """
    await client.get(b"\0", count_only=True)
    return set(await client.lease_list())


async def lease_gone(client: EtcdClient, lease: int, *, timeout: float = 3.0) -> None:
    """Wait until etcd reports ``lease`` gone. The answering member may not have applied
    the revoke yet: poll for a few seconds, well under the TTLs the tests use, so a
    pass proves a revoke and not an expiry."""

    async def gone() -> bool:
        return await client.lease_time_to_live(lease) is None

    await eventually_async(gone, timeout=timeout, message=f"lease {lease:x} revoked")


def queue_key(name: str, session: Session) -> bytes:
    """The etcd recipe's key for ``session`` in the queue ``name``: NAME/<lease hex>."""
    return f"{name}/{session.lease_id:x}".encode()


def coord_tasks() -> list[asyncio.Task[Any]]:
    """Running tasks owned by sessions (keepalive) and elections (leadership monitor)."""
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done() and t.get_name().startswith(("whizorch-session-", "whizorch-election-"))
    ]


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and check that it ends with CancelledError (its cleanup done)."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class KeepaliveLog:
    """Records each successful keepalive of ``client``: when it was sent, and the TTL.

    A spy around the real call (etcd still answers every keepalive); times are the
    event loop's clock, the one the Session uses.
    """

    def __init__(self, client: EtcdClient) -> None:
        self.ok: list[tuple[float, int]] = []
        real = client.lease_keepalive_once

        async def spy(lease_id: int, **kwargs: Any) -> int:
            sent = asyncio.get_running_loop().time()
            ttl = await real(lease_id, **kwargs)
            self.ok.append((sent, ttl))
            return ttl

        client.lease_keepalive_once = spy  # type: ignore[method-assign]
