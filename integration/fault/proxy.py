"""Loopback TCP proxies in front of the etcd members, so the nemesis can cut connections.

Each role reaches etcd through these (one proxy per member, ``127.0.0.1`` only). The
proxies run on an event loop of their own in one thread, so the test's loop being busy
(reading files, parsing records) never slows the roles' traffic. `Proxies.drop` aborts
every connection through one proxy (both sides get a reset, as when a middlebox or a
member's network goes away); new connections are accepted at once.

`connected_members` tells which member a process talks to now: its sockets (from
``/proc/<pid>/fd``) matched against ``/proc/net/tcp`` give its connections to the
proxies, and the proxy saw the most recent traffic on one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

__all__ = ["Proxies", "tcp_connections"]

T = TypeVar("T")

_CONNECT_TIMEOUT_S = 2.0
_CHUNK = 1 << 16


class _Conn:
    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.last = time.monotonic()

    def abort(self) -> None:
        for w in (self.client, self.upstream):
            w.transport.abort()


class _Proxy:
    """One listening socket forwarding to one member (lives on the proxies' loop)."""

    def __init__(self, name: str, upstream: str) -> None:
        self.name = name
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.port = 0
        self.conns: dict[int, _Conn] = {}
        """Client-side port of each connection -> the connection."""
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            try:
                async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                    up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except (OSError, TimeoutError):
                writer.transport.abort()  # the member is down: refuse like it would
                return
            if self._closing:  # connected while the proxy closed: nobody would reset it
                up_writer.transport.abort()
                writer.transport.abort()
                return
            peer = int(writer.get_extra_info("peername")[1])
            conn = _Conn(writer, up_writer)
            self.conns[peer] = conn
            pumps = [
                asyncio.ensure_future(self._pump(reader, up_writer, conn)),
                asyncio.ensure_future(self._pump(up_reader, writer, conn)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for p in pumps:
                    p.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
                conn.abort()
                if self.conns.get(peer) is conn:
                    del self.conns[peer]
        finally:
            self._handlers.discard(task)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Conn) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(_CHUNK):
                conn.last = time.monotonic()
                writer.write(data)
                await writer.drain()

    def drop(self) -> int:
        conns = list(self.conns.values())
        for c in conns:
            c.abort()
        return len(conns)

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        self.drop()
        # the reset connections end their handlers; one still connecting upstream ends
        # by its own timeout. Cancelling them instead makes asyncio's stream callback log
        # the CancelledError it finds on the task ("Exception in callback ...").
        handlers = list(self._handlers)
        if handlers:
            _, late = await asyncio.wait(handlers, timeout=_CONNECT_TIMEOUT_S + 1.0)
            for h in late:
                h.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


class Proxies:
    """One proxy per member: ``async with Proxies({"etcd0": "127.0.0.1:2379", ...}) as p``."""

    def __init__(self, upstreams: Mapping[str, str]) -> None:
        self._proxies = {name: _Proxy(name, ep) for name, ep in upstreams.items()}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fault-proxies", daemon=True)
        self._started = False

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def __aenter__(self) -> Proxies:
        self._thread.start()
        self._started = True
        try:
            for p in self._proxies.values():
                await self._call(p.start())
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every proxy and connection, stop the thread. Closing twice is fine."""
        if not self._started:
            return
        self._started = False
        try:
            for p in self._proxies.values():
                await self._call(p.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, 10.0)

    @property
    def names(self) -> list[str]:
        return list(self._proxies)

    def endpoint(self, name: str) -> str:
        """Where roles connect to reach member ``name``."""
        return f"127.0.0.1:{self._proxies[name].port}"

    def name_of_port(self, port: int) -> str | None:
        return next((n for n, p in self._proxies.items() if p.port == port), None)

    async def drop(self, name: str) -> int:
        """Reset every connection through ``name``'s proxy; how many there were."""

        async def run() -> int:
            return self._proxies[name].drop()

        return await self._call(run())

    def connected_members(self, pid: int) -> list[tuple[str, float]]:
        """Members process ``pid`` has connections to, most recently active first, with
        the seconds since that connection last carried traffic."""
        now = time.monotonic()
        found: dict[str, float] = {}
        for local, remote in tcp_connections(pid):
            name = self.name_of_port(remote)
            if name is None:
                continue
            conn = self._proxies[name].conns.get(local)
            if conn is not None:
                age = now - conn.last
                found[name] = min(age, found.get(name, age))
        return sorted(found.items(), key=lambda kv: kv[1])


def tcp_connections(pid: int) -> list[tuple[int, int]]:
    """(local port, remote port) of ``pid``'s established IPv4 TCP connections on loopback."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(int(link[8:-1]))
        with open(f"/proc/{pid}/net/tcp") as fh:
            lines = fh.read().splitlines()[1:]
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) < 10 or parts[3] != "01" or int(parts[9]) not in inodes:  # 01: ESTABLISHED
            continue
        local, remote = parts[1], parts[2]
        out.append((int(local.split(":")[1], 16), int(remote.split(":")[1], 16)))
    return out
