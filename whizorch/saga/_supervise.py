"""How the roles (Worker, Orchestrator) tell a fault to wait out from a bug to report.

A role's background work runs as long as the role is open. Anything etcd or the
network does to it (a member killed, no leader, a lost lease, a broken stream) is
*transient*: the role backs off and registers or campaigns again. Anything else (a
bug, bad configuration, credentials etcd refuses) ends the role: its owner's
``async with`` raises it, and ``join()`` returns it, so a process never runs on doing
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from whizorch.coord import LeaseTiming, Session
from whizorch.errors import (
    AuthError,
    ClosedError,
    ConfigError,
    DecodeError,
    RequestTooLargeError,
    WhizorchError,
)

__all__ = ["PERMANENT", "BackgroundTasks", "Backoff", "end_session", "is_transient", "role_lease", "stop_role"]

DEFAULT_LEASE_TTL_S = 5
"""A role's lease TTL when neither ``lease`` nor ``lease_ttl_s`` is given."""

log = logging.getLogger("whizorch.saga.supervise")


PERMANENT: tuple[type[WhizorchError], ...] = (ConfigError, RequestTooLargeError, DecodeError)
"""What retrying cannot fix in one saga's work: misuse, a value over a size limit, data
in etcd that does not decode. The leader fails the saga such an error stops."""


def is_transient(exc: BaseException) -> bool:
    """True for the faults a role waits out: etcd or network trouble, a lost lease.

    The ``PERMANENT`` errors, refused credentials and a closed client are not: retrying
    cannot fix them. Neither is any exception outside whizorch's tree (a bug).
    """
    if isinstance(exc, (*PERMANENT, AuthError, ClosedError)):
        return False
    return isinstance(exc, (WhizorchError, TimeoutError))


def role_lease(
    lease: LeaseTiming | None,
    *,
    ttl_s: int | None,
    keepalive_interval_s: float | None,
    step_down_margin_s: float | None,
) -> LeaseTiming:
    """A role's lease timing: ``lease`` as given (from the configuration), or built
    from the role's ``lease_ttl_s``/``keepalive_interval_s``/``step_down_margin_s``
    (one or the other: both is a ConfigError)."""
    parts = {"lease_ttl_s": ttl_s, "keepalive_interval_s": keepalive_interval_s, "step_down_margin_s": step_down_margin_s}
    if lease is None:
        return LeaseTiming.of(
            DEFAULT_LEASE_TTL_S if ttl_s is None else ttl_s,
            keepalive_interval_s=keepalive_interval_s, step_down_margin_s=step_down_margin_s,
        )
    if not isinstance(lease, LeaseTiming):
        raise ConfigError("lease must be a LeaseTiming (see LeaseTiming.of)", field="lease", value=lease)
    given = [name for name, value in parts.items() if value is not None]
    if given:
        raise ConfigError(
            f"pass the lease timing once: lease, or {', '.join(given)} (not both)", field=given[0], value=parts[given[0]]
        )
    return lease


class Backoff:
    """Exponential backoff with full jitter: ``first_s``, doubling up to ``max_s``."""

    def __init__(self, *, first_s: float = 0.05, max_s: float = 2.0) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self._next = first_s

    def reset(self) -> None:
        """After a success: the next failure waits the shortest delay again."""
        self._next = self.first_s

    def next_s(self) -> float:
        """The delay before the next try (and double it for the one after)."""
        delay = random.uniform(self._next / 2, self._next)
        self._next = min(self.max_s, self._next * 2)
        return delay


class BackgroundTasks:
    """Tasks a role owns beside its main loop (best-effort cleanups such as revoking
    a lost lease): tracked, their errors logged, cancelled when the role closes."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, work: Callable[[], Awaitable[None]], what: str) -> None:
        """Run ``work()`` in the background; a failure is logged, never raised."""

        async def run() -> None:
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("%s: %s failed", self._name, what, exc_info=True)

        task = asyncio.get_running_loop().create_task(run(), name=f"{self._name}-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Cancel what is still running and wait for it."""
        tasks, self._tasks = list(self._tasks), set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def end_session(session: Session, background: BackgroundTasks) -> None:
    """Close a role's session without waiting on etcd: a lost lease is revoked in the
    background (etcd may have no leader to answer yet), so the role registers or
    campaigns again at once; what the old lease held goes with it."""
    lost = session.is_lost
    lease = session.lease_id
    client = session.client
    with contextlib.suppress(WhizorchError):
        await session.close(revoke=not lost)
    if lost and lease and client.is_open:

        async def revoke() -> None:
            with contextlib.suppress(WhizorchError):
                await client.lease_revoke(lease)

        background.start(revoke, f"revoke-{lease:x}")


async def stop_role(task: asyncio.Task[None] | None, background: BackgroundTasks) -> None:
    """Cancel a role's main task, then its background work; raise the fatal error that
    had stopped the role by itself, if one did (``async with`` then raises it)."""
    try:
        if task is not None:
            task.cancel()
            for r in await asyncio.gather(task, return_exceptions=True):
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    raise r
    finally:
        await background.aclose()
