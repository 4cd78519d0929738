"""The region lab's network: one process holding every path between regions.

`RegionLab` runs it as ``python -m whizorch.testing._lab_net`` and talks to it in JSON
lines over its stdin and stdout (one request, one answer). It owns TCP listeners; each
forwards its connections to one etcd member's client, peer or metrics port, and holds
every chunk for its link's one-way delay (jitter included) before passing it on, in
order per direction. A cut link delivers nothing until it is healed; connections are
not reset (a real partition drops packets and TCP sends them again once the path is
back).

With network namespaces, a listener is made inside the namespace of the region it
serves and its upstream socket inside the target member's namespace: this process
enters a namespace with ``setns(2)`` only long enough to create a socket there (a socket
stays in the namespace it was made in). It needs root for that; nothing else here does.

Requests (``{"op": ...}``), each answered by ``{"ok": true, ...}`` or ``{"error": msg}``:

``start``
    ``listeners`` (see `_Listener`) and ``links``; answers the ``ports`` the listeners
    got, in order.
``targets``
    ``targets``: ``{member: {service: [namespace or null, host, port]}}``, and ``ids``:
    ``{etcd member id in hex: region}`` (the approximation tells peers apart by id).
``links``
    ``links``: directed links to change (``src``, ``dst``, ``delay_ms``, ``jitter_ms``,
    ``up``).

End of input ends the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import random
import socket
import sys
from typing import Any

import attrs

from whizorch.testing._lab_model import find_server_from, release_at, sample_delay_s

__all__ = ["main"]

log = logging.getLogger("whizorch.testing.lab_net")

_CHUNK = 1 << 16
_QUEUE_CHUNKS = 64  # per direction of a connection: 4 MiB at most before reading stops
_CONNECT_TIMEOUT_S = 5.0
_CLONE_NEWNET = 0x40000000
_HEADER_TAIL = 256  # bytes kept between chunks while looking for X-Server-From


class _Namespaces:
    """Creates sockets inside named network namespaces (``/run/netns/NAME``)."""

    def __init__(self) -> None:
        self._home: int | None = None
        self._fds: dict[str, int] = {}
        self._libc: Any = None

    def _setns(self, fd: int) -> None:
        if self._libc is None:
            self._libc = ctypes.CDLL(None, use_errno=True)
        if self._libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns: {os.strerror(errno)}")

    def socket(self, namespace: str | None) -> socket.socket:
        """A TCP socket in ``namespace`` (``None``: this process's own)."""
        if namespace is None:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self._home is None:
            self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = self._fds.get(namespace)
        if fd is None:
            fd = self._fds[namespace] = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        self._setns(fd)
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            self._setns(self._home)


@attrs.define
class _LinkState:
    """One direction between two regions, as this process applies it."""

    delay_ms: float
    jitter_ms: float
    up: bool = True
    up_since: float = 0.0
    changed: asyncio.Event = attrs.field(factory=asyncio.Event)

    def update(self, *, delay_ms: float, jitter_ms: float, up: bool, now: float) -> None:
        if up and not self.up:
            self.up_since = now
        self.delay_ms, self.jitter_ms, self.up = delay_ms, jitter_ms, up
        # wake every chunk waiting on this link, then give later waiters a fresh event
        self.changed.set()
        self.changed = asyncio.Event()


@attrs.frozen
class _Listener:
    """Where to listen, what to reach, and which link the bytes pay."""

    namespace: str | None
    host: str
    port: int
    member: str
    """The etcd member reached (by name)."""
    service: str
    """``client``, ``peer`` or ``metrics``."""
    src: str | None
    """The region the connecting side is in; ``None``: no delay (or found by id)."""
    dst: str | None
    """The member's region; ``None`` for a direct (undelayed) listener."""
    identify: bool = False
    """Tell the connecting member by its ``X-Server-From`` header (the approximation)."""
    default_delay_ms: float = 0.0
    """One-way delay while the sender is unknown (``identify`` only)."""


@attrs.define
class _Chunk:
    data: bytes | None  # b"": end of stream; None: the sender's side broke (reset)
    arrival: float
    delay: float


class _Connection:
    def __init__(self, net: _Network, listener: _Listener) -> None:
        self.net = net
        self.listener = listener
        self.sender_id: str | None = None
        self._tail = b""
        self._default = _LinkState(listener.default_delay_ms, 0.0)

    def _src(self) -> str | None:
        if not self.listener.identify:
            return self.listener.src
        if self.sender_id is None:
            return None
        return self.net.ids.get(self.sender_id)

    def link(self, *, forward: bool) -> _LinkState | None:
        """The link this direction pays now (``None``: no delay at all)."""
        dst = self.listener.dst
        if dst is None:
            return None
        src = self._src()
        if src is None:
            return self._default if self.listener.identify else None
        if src == dst:
            return None
        return self.net.links.get((src, dst) if forward else (dst, src))

    def look_for_sender(self, data: bytes) -> None:
        if not self.listener.identify or self.sender_id is not None:
            return
        window = self._tail + data
        self.sender_id = find_server_from(window)
        self._tail = window[-_HEADER_TAIL:]


class _Network:
    def __init__(self) -> None:
        self.namespaces = _Namespaces()
        self.links: dict[tuple[str, str], _LinkState] = {}
        self.targets: dict[str, dict[str, tuple[str | None, str, int]]] = {}
        self.ids: dict[str, str] = {}
        self.servers: list[asyncio.Server] = []
        self.handlers: set[asyncio.Task[None]] = set()
        self.rng = random.Random(0)

    # -- control ----------------------------------------------------------------------

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "start":
            self.rng = random.Random(request.get("seed", 0))
            self.set_links(request.get("links", []))
            self.set_targets(request)
            ports = [await self.listen(_Listener(**spec)) for spec in request["listeners"]]
            return {"ok": True, "ports": ports}
        if op == "targets":
            self.set_targets(request)
            return {"ok": True}
        if op == "links":
            self.set_links(request["links"])
            return {"ok": True}
        if op == "ping":
            return {"ok": True, "connections": len(self.handlers)}
        return {"error": f"unknown op {op!r}"}

    def set_targets(self, request: dict[str, Any]) -> None:
        for member, services in request.get("targets", {}).items():
            self.targets[member] = {
                service: (where[0], str(where[1]), int(where[2]))
                for service, where in services.items()
            }
        self.ids.update(request.get("ids", {}))

    def set_links(self, links: list[dict[str, Any]]) -> None:
        now = asyncio.get_running_loop().time()
        for spec in links:
            key = (str(spec["src"]), str(spec["dst"]))
            delay, jitter, up = float(spec["delay_ms"]), float(spec["jitter_ms"]), bool(spec["up"])
            state = self.links.get(key)
            if state is None:
                self.links[key] = _LinkState(delay, jitter, up, now)
            else:
                state.update(delay_ms=delay, jitter_ms=jitter, up=up, now=now)

    async def listen(self, listener: _Listener) -> int:
        sock = self.namespaces.socket(listener.namespace)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((listener.host, listener.port))
            sock.setblocking(False)
            server = await asyncio.start_server(
                lambda r, w: self._accept(listener, r, w), sock=sock, backlog=128
            )
        except BaseException:
            sock.close()
            raise
        self.servers.append(server)
        return int(sock.getsockname()[1])

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for task in list(self.handlers):
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)

    # -- forwarding -------------------------------------------------------------------

    async def _accept(
        self, listener: _Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            await self._serve(listener, reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        except Exception:  # one connection's trouble never ends the network
            log.exception("connection through %s failed", listener)
            writer.transport.abort()
        finally:
            self.handlers.discard(task)

    async def _serve(
        self, listener: _Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        target = self.targets.get(listener.member, {}).get(listener.service)
        if target is None:
            writer.transport.abort()
            return
        namespace, host, port = target
        upstream = self.namespaces.socket(namespace)
        upstream.setblocking(False)
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                await asyncio.get_running_loop().sock_connect(upstream, (host, port))
            up_reader, up_writer = await asyncio.open_connection(sock=upstream)
        except (OSError, TimeoutError):
            upstream.close()
            writer.transport.abort()  # the member is down: refuse as it would
            return
        conn = _Connection(self, listener)
        pumps = [
            asyncio.ensure_future(self._pump(conn, reader, up_writer, forward=True)),
            asyncio.ensure_future(self._pump(conn, up_reader, writer, forward=False)),
        ]
        try:
            # each direction ends on its own (a half-close travels like data); a broken
            # direction aborts both sides
            for done in asyncio.as_completed(pumps):
                if not await done:
                    break
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            writer.transport.abort()
            up_writer.transport.abort()

    async def _pump(
        self,
        conn: _Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        forward: bool,
    ) -> bool:
        """Carry one direction; ``True`` when it ended cleanly (EOF passed on)."""
        queue: asyncio.Queue[_Chunk] = asyncio.Queue(_QUEUE_CHUNKS)
        reading = asyncio.ensure_future(self._read(conn, reader, queue, forward=forward))
        try:
            return await self._deliver(conn, queue, writer, forward=forward)
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)

    async def _read(
        self,
        conn: _Connection,
        reader: asyncio.StreamReader,
        queue: asyncio.Queue[_Chunk],
        *,
        forward: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data: bytes | None = await reader.read(_CHUNK)
            except OSError:
                data = None
            if forward and data:
                conn.look_for_sender(data)
            link = conn.link(forward=forward)
            delay = 0.0 if link is None else sample_delay_s(self.rng, link.delay_ms, link.jitter_ms)
            await queue.put(_Chunk(data, loop.time(), delay))
            if not data:
                return

    async def _deliver(
        self,
        conn: _Connection,
        queue: asyncio.Queue[_Chunk],
        writer: asyncio.StreamWriter,
        *,
        forward: bool,
    ) -> bool:
        loop = asyncio.get_running_loop()
        previous = 0.0
        while True:
            chunk = await queue.get()
            release = max(chunk.arrival + chunk.delay, previous)
            while (link := conn.link(forward=forward)) is not None:
                changed = link.changed
                if not link.up:
                    await changed.wait()
                    continue
                release = release_at(
                    chunk.arrival, chunk.delay, previous, link.up_since, link.delay_ms / 1000
                )
                wait = release - loop.time()
                if wait <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await changed.wait()
            previous = release
            if chunk.data is None:
                return False
            try:
                if not chunk.data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return True
                writer.write(chunk.data)
                await writer.drain()
            except OSError:
                return False


async def _serve_control(network: _Network) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        try:
            answer = await network.handle(json.loads(line))
        except Exception as exc:
            log.exception("request failed: %s", line[:200])
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


async def _main() -> None:
    network = _Network()
    try:
        await _serve_control(network)
    finally:
        await network.close()


def main() -> None:
    """Serve the lab's network until stdin closes."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    asyncio.run(_main())


if __name__ == "__main__":
    main()
