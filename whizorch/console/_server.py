"""Serving the console: the hub and uvicorn in one supervised task group.

:class:`ConsoleServer` is an async context manager: entering binds the socket (a port
in use is a clear error at once), starts the hub and waits for its first read, then
serves; ``url`` is where. ``join()`` waits until the server ends (a fatal error in the
hub, such as credentials etcd refuses, is raised there). Leaving stops both.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
from collections.abc import Iterable, Iterator

import uvicorn

from whizorch.console._app import build_app
from whizorch.console._hub import Hub
from whizorch.console._settings import ConsoleSettings
from whizorch.errors import ClosedError, ConfigError
from whizorch.etcd import EtcdClient
from whizorch.saga import Keys

__all__ = ["ConsoleServer"]

log = logging.getLogger("whizorch.console")

READY_TIMEOUT_S = 300.0
"""How long the first read of the namespace may take (100,000 sagas: seconds)."""


class _Server(uvicorn.Server):
    """uvicorn's server, leaving signals to the process that owns the loop (the CLI
    stops the console on SIGINT/SIGTERM; a test or the demo stops it by leaving)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class ConsoleServer:
    """The web console of one namespace, served from this event loop."""

    def __init__(
        self,
        client: EtcdClient,
        settings: ConsoleSettings | None = None,
        *,
        namespace: str = "whizorch",
        regions: Iterable[str] = (),
    ) -> None:
        self.settings = settings or ConsoleSettings()
        self.hub = Hub(client, Keys(namespace), self.settings, regions=regions)
        self._state = _State.NEW
        self._task: asyncio.Task[None] | None = None
        self._server: uvicorn.Server | None = None
        self._port = self.settings.port

    @property
    def url(self) -> str:
        """Where the console answers (the real port when bound to port 0)."""
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self._port}/"

    def _bind(self) -> socket.socket:
        host, port = self.settings.host, self.settings.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto named: asyncio sets TCP_NODELAY only on connections whose socket says
        # IPPROTO_TCP; with proto 0 every response waited out Nagle and the browser's
        # delayed ACK, about 40 ms each
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror}; pass another --bind", field="bind", value=f"{host}:{port}"
            ) from None
        sock.listen(128)
        sock.setblocking(False)
        self._port = sock.getsockname()[1]
        return sock

    async def __aenter__(self) -> ConsoleServer:
        if self._state is not _State.NEW:
            raise ClosedError("a ConsoleServer is entered once")
        self._state = _State.OPEN
        sock = self._bind()
        config = uvicorn.Config(
            build_app(self.hub, self.settings), log_level="warning", access_log=False, lifespan="off",
            timeout_graceful_shutdown=1, ws="none",
        )  # fmt: skip
        self._server = _Server(config)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(sock, ready), name="whizorch-console")
        try:
            await asyncio.wait({self._task, ready}, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
            if self._task.done():
                self._task.result()  # the hub or the server failed first: raise it
                raise ClosedError("the console stopped before it served")
            if not ready.done():
                raise TimeoutError(f"the console's first read did not finish within {READY_TIMEOUT_S:g}s")
        except BaseException:
            await self.aclose()
            raise
        return self

    async def _run(self, sock: socket.socket, ready: asyncio.Future[None]) -> None:
        assert self._server is not None
        server = self._server
        try:
            async with asyncio.TaskGroup() as tg:
                hub = tg.create_task(self.hub.run(), name="whizorch-console-hub")
                await self.hub.wait_ready()
                serving = tg.create_task(server.serve(sockets=[sock]), name="whizorch-console-http")
                # the socket listens already: a request made now waits in its backlog
                if not ready.done():
                    ready.set_result(None)
                await serving
                hub.cancel()  # the server stopped (asked to): the hub stops with it
        finally:
            sock.close()

    async def join(self) -> None:
        """Until the console stops (a fatal error of the hub is raised)."""
        assert self._task is not None
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def aclose(self) -> None:
        """Stop serving and watching (idempotent)."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        if self._server is not None:
            self._server.should_exit = True
        task = self._task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), 3.0)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
