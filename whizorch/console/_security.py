"""The console's guard: headers on every answer, the token, the Host check, CSRF.

One ASGI middleware in front of the app (pure ASGI, so a streaming answer such as the
live stream passes through untouched):

* every answer carries a strict Content-Security-Policy and its companions;
* on a loopback bind, a request whose ``Host`` is not a loopback name is refused (a
  page elsewhere cannot reach the console through DNS rebinding);
* with a token, every request but ``/login`` and ``/static/`` needs it: as
  ``Authorization: Bearer <token>`` or as the cookie the login form sets (an HMAC of
  the token, HttpOnly, SameSite=Strict); a page asked for without it goes to the login
  form, anything else gets 401.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

from whizorch.console._settings import ConsoleSettings, is_loopback

__all__ = ["COOKIE", "CSP", "Guard", "csrf_ok", "session_value"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "whizorch_console"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would make a form POST's Origin "null"
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]
OPEN_PATHS = ("/login", "/static/")


def session_value(token: str) -> str:
    """The login cookie's value: proves the token without holding it."""
    return hmac.new(token.encode(), b"whizorch-console-session", hashlib.sha256).hexdigest()


def new_csrf() -> str:
    return secrets.token_urlsafe(32)


def csrf_ok(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


class Guard:
    """The middleware described in the module docstring."""

    def __init__(self, app: ASGIApp, settings: ConsoleSettings) -> None:
        self.app = app
        self.settings = settings
        self.check_host = is_loopback(settings.host)
        self.cookie = session_value(settings.token) if settings.token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *HEADERS]
            await send(message)

        if self.check_host and not is_loopback(_host_name(headers.get("host", ""))):
            await _plain(send_with_headers, 421, "the console answers only to a loopback Host (it is bound to loopback)")
            return
        path: str = scope.get("path", "/")
        if self.settings.token and not path.startswith(OPEN_PATHS) and not self._authorized(headers):
            if scope.get("method") == "GET" and "text/html" in headers.get("accept", "") and path != "/events":
                target = path + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else "")
                location = "/login?next=" + quote(target, safe="")
                await send_with_headers({"type": "http.response.start", "status": 303,
                                         "headers": [(b"location", location.encode()), (b"content-length", b"0")]})  # fmt: skip
                await send_with_headers({"type": "http.response.body", "body": b""})
                return
            await _plain(send_with_headers, 401, "this console needs its token: log in at /login, or send Authorization: Bearer <token>",
                         extra=[(b"www-authenticate", b"Bearer")])  # fmt: skip
            return
        await self.app(scope, receive, send_with_headers)

    def _authorized(self, headers: dict[str, str]) -> bool:
        token = self.settings.token
        assert token is not None and self.cookie is not None
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and hmac.compare_digest(auth[7:].strip().encode(), token.encode()):
            return True
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and hmac.compare_digest(value.encode(), self.cookie.encode()):
                return True
        return False


async def _plain(send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = (text + "\n").encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})
