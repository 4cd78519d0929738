"""How a role command lives: signals first, etcd's first answer, then ready, a prompt stop.

The order is what a user meets when a role is pointed at a wrong or dead etcd:

1. SIGINT/SIGTERM handlers are installed before anything can block (opening the
   client, etcd's first answer, a session, a registration), and everything a role
   awaits before it is ready is abandoned when a signal comes: the command exits 0 at
   once, whatever state it was in.
2. The role waits for etcd's first answer (a read of a key its etcd role may read),
   logging each failure with the fix (``--etcd``, ``WHIZORCH_ETCD_ENDPOINTS``, the
   config file) and retrying until it answers or a signal comes.
3. Only then does the command print its ready event (a worker: registered; an
   orchestrator: etcd answered and it is campaigning).
4. The first signal once ready stops gracefully (a worker drains: it takes no new
   step and lets running handlers finish, up to its drain timeout); a second one stops
   at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import attrs

from whizorch.cli._main import ETCD_FIX
from whizorch.errors import WhizorchError
from whizorch.etcd import EtcdClient, EtcdConfig
from whizorch.saga import Orchestrator, Worker, is_transient

__all__ = [
    "StopSignal", "Stopped", "close_role", "exit_now", "open_client", "run_until_signalled", "serve_role", "until_stopped",
    "wait_for_etcd",
]

log = logging.getLogger("whizorch.cli")

T = TypeVar("T")

PROBE_RETRY_S = 2.0
"""How long one probe of etcd tries before the role says it cannot reach it yet."""


class Stopped(Exception):
    """A signal came before the role was ready: the command exits 0."""


class StopSignal:
    """SIGINT/SIGTERM as events: ``requested`` on the first, ``forced`` on the second."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.forced = asyncio.Event()
        self.name: str | None = None

    def __call__(self, sig: signal.Signals) -> None:
        if self.requested.is_set():
            log.warning("%s again: stopping now", sig.name)
            self.forced.set()
            return
        self.name = sig.name
        self.requested.set()


def run_until_signalled(body: Callable[[StopSignal], Awaitable[None]]) -> None:
    """Run ``body(stop)`` with SIGINT/SIGTERM handlers installed before it starts; a
    signal before the role is ready (``Stopped``) ends the command quietly."""

    async def runner() -> None:
        stop = StopSignal()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop, sig)
        try:
            await body(stop)
        except Stopped:
            log.warning("%s: stopped before it was ready", stop.name)

    asyncio.run(runner())


async def until_stopped(stop: StopSignal, work: Awaitable[T]) -> T:
    """Await ``work``, unless a signal comes first: then cancel it and raise Stopped."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stop.requested.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(waiter, task, return_exceptions=True)
    if task.cancelled():
        raise Stopped
    return task.result()


def _one_line(exc: WhizorchError) -> str:
    """The error's message alone (its fields repeat the endpoints), on one line."""
    return " ".join(exc.message.split())


async def wait_for_etcd(config: EtcdConfig, probe: bytes, stop: StopSignal) -> None:
    """Return once etcd answers a read of the keys under ``probe``; until then, log why
    it does not and how to fix it, and try again (a signal raises Stopped).

    A fault that retrying cannot fix (refused credentials, a bad TLS file) is raised.
    """
    endpoints = ",".join(config.endpoints)
    probing = attrs.evolve(config, retry_deadline_s=PROBE_RETRY_S, connect_timeout_s=min(config.connect_timeout_s, 1.5))
    delay = 0.5
    while True:
        try:
            async with EtcdClient(probing) as client:
                await client.get(probe, prefix=True, count_only=True)
            return
        except WhizorchError as exc:
            if not is_transient(exc):
                raise
            log.warning("cannot reach etcd at %s yet (%s); retrying; to fix: %s", endpoints, _one_line(exc), ETCD_FIX)
        await until_stopped(stop, asyncio.sleep(delay))  # ok: backoff before asking etcd again
        delay = min(delay * 2, 5.0)


async def open_client(config: EtcdConfig, stop: StopSignal) -> EtcdClient:
    """An open client (authenticating may wait on etcd: a signal raises Stopped)."""
    client = EtcdClient(config)
    try:
        return await until_stopped(stop, client.open())
    except BaseException:
        await client.close()
        raise


async def serve_role(stop: StopSignal, role: Worker | Orchestrator, stopping: Callable[[], str]) -> None:
    """Wait for a signal, then log ``stopping()`` (what the role does now); a role that
    stops by itself (only a fatal error does) ends the command with that error, so a
    process never runs on doing nothing."""
    stopped = asyncio.ensure_future(stop.requested.wait())
    joined = asyncio.ensure_future(role.join())
    try:
        await asyncio.wait({stopped, joined}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for fut in (stopped, joined):
            if not fut.done():
                fut.cancel()
        await asyncio.gather(stopped, joined, return_exceptions=True)
    if joined.done() and not joined.cancelled():
        joined.result()  # raises what stopped the role
        raise RuntimeError("the role stopped without an error")  # join() only returns on close
    log.warning("%s: %s", stop.name, stopping())


async def close_role(stop: StopSignal, closing: Awaitable[None], *, limit_s: float, name: str) -> None:
    """Await a role's close (a worker's drain, a leader's resignation); a second signal,
    or a close that takes longer than ``limit_s`` (etcd does not answer the last
    writes), ends the process at once: the role's lease ends by itself within its TTL."""
    task = asyncio.ensure_future(closing)
    forced = asyncio.ensure_future(stop.forced.wait())
    try:
        await asyncio.wait({task, forced}, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        forced.cancel()
    if task.done():
        task.result()
        return
    why = "on a second signal" if stop.forced.is_set() else f"as its close took over {limit_s:g}s (etcd does not answer?)"
    log.warning("%s: stopping at once %s; its lease ends by itself within its TTL", name, why)
    exit_now(0)


def exit_now(code: int) -> NoReturn:
    """End the process without waiting on anything (output flushed first)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
