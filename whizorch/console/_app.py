"""The console's routes: pages, their fragments, the live stream, actions, login.

Every page is rendered from the hub's mirror (overview, list) or from one read at one
revision (a saga); ``?fragment=1`` renders only the page's main part, which the page's
script fetches when the live stream says its topic moved. Actions (cancel, resubmit)
are refused with 403 unless the console was started with them allowed, and go through
a confirmation form carrying the process's CSRF token.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from whizorch._format import fmt_duration, fmt_time
from whizorch.console._detail import read_detail
from whizorch.console._draw import draw
from whizorch.console._hub import OVERVIEW, SAGAS, Hub, saga_topic
from whizorch.console._index import ALL_STATUSES, Query
from whizorch.console._security import COOKIE, Guard, csrf_ok, new_csrf, session_value
from whizorch.console._settings import ConsoleSettings
from whizorch.console._timeline import build_timeline
from whizorch.errors import ConfigError, WhizorchError
from whizorch.saga import SAGA_ID, Keys, SagaClient

__all__ = ["build_app"]

PAGE_SIZES = (25, 50, 100, 200)
SINCE = {"15m": 900, "1h": 3600, "24h": 86400, "7d": 7 * 86400}
PING_S = 15.0
_ID_RE = re.compile(SAGA_ID)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("whizorch.console", "templates"),
        autoescape=True,  # every template, every value: user data is text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["t"] = fmt_time
    env.filters["dur"] = fmt_duration
    env.filters["num"] = lambda n: f"{n:,}" if isinstance(n, int) else ("-" if n is None else str(n))
    return env


class Console:
    """The routes' shared state: the hub, settings, templates, the CSRF token."""

    def __init__(self, hub: Hub, settings: ConsoleSettings) -> None:
        self.hub = hub
        self.settings = settings
        self.keys: Keys = hub.keys
        self.env = _env()
        self.csrf = new_csrf()

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        fragment = request.query_params.get("fragment") == "1"
        body = self.env.get_template(name).render(
            layout="fragment.html" if fragment else "base.html", settings=self.settings, ns=self.keys.ns,
            revision=self.hub.revision, stale=self.hub.cluster_error, path=request.url.path,
            actions=self.settings.allow_actions, csrf=self.csrf, **context,
        )  # fmt: skip
        return HTMLResponse(body, status_code=status)

    # -- pages ---------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        return self.render(request, "overview.html", topic=OVERVIEW, doc=self.hub.overview(), now=time.time())

    async def sagas(self, request: Request) -> Response:
        p = request.query_params
        status = p.get("status") or None
        errors = []
        if status is not None and status not in ALL_STATUSES:
            errors.append(f"status {status!r} is not one of {', '.join(ALL_STATUSES)}")
            status = None
        since_key = p.get("since") or ""
        if since_key and since_key not in SINCE:
            errors.append(f"since {since_key!r} is not one of {', '.join(SINCE)}")
            since_key = ""
        before = p.get("before") or None
        if before is not None and not before.isdigit():
            errors.append(f"before {before!r} is not a txid (use the 'older' link)")
            before = None
        limit_text = p.get("limit") or "50"
        limit = int(limit_text) if limit_text.isdigit() and int(limit_text) in PAGE_SIZES else 50
        now = time.time()
        q = Query(
            status=status, saga_type=p.get("type") or None, region=p.get("region") or None,
            id_prefix=(p.get("prefix") or "").strip() or None, since=now - SINCE[since_key] if since_key else None,
            before=int(before) if before else None, limit=limit,
        )  # fmt: skip
        started = time.perf_counter()
        page = self.hub.index.page(q)
        took = time.perf_counter() - started
        filters = {k: v for k, v in {
            "status": status, "type": q.saga_type, "region": q.region, "prefix": q.id_prefix, "since": since_key or None,
            "limit": str(limit) if limit != 50 else None,
        }.items() if v}  # fmt: skip
        older = f"/sagas?{urlencode({**filters, 'before': page.next_before})}" if page.next_before else None
        return self.render(
            request, "sagas.html", topic=SAGAS, page=page, q=q, filters=filters, errors=errors, older=older,
            first=f"/sagas?{urlencode(filters)}" if before else None, now=now, took_ms=took * 1000,
            statuses=ALL_STATUSES, types=sorted(self.hub.index.types), regions=self.hub.region_names(),
            since_choices=list(SINCE), counts=self.hub.index.status_counts(), page_sizes=PAGE_SIZES,
            failed_link=f"/sagas?{urlencode({**{k: v for k, v in filters.items() if k != 'status'}, 'status': 'failed'})}",
        )  # fmt: skip

    async def saga(self, request: Request) -> Response:
        sid = request.path_params["saga_id"]
        if not _ID_RE.match(sid):
            return self.render(request, "message.html", status=400, title="not a saga id",
                               message=f"{sid!r} is not a saga id", topic=None)  # fmt: skip
        detail = await read_detail(self.hub.client, self.keys, sid)
        now = time.time()
        timeline = drawing = None
        if detail.record is not None:
            used = detail.record.regions  # lanes: the saga's regions in order of first use, then the others
            lanes = [*used, *(r for r in self.hub.region_names() if r not in used)]
            timeline = build_timeline(detail.record, detail.versions, detail.results, lanes, now)
            for bar in timeline.bars:
                if bar.worker is not None and bar.worker in self.hub.worker_names:
                    bar.worker = f"{self.hub.worker_names[bar.worker]} (lease {bar.worker})"
            drawing = draw(timeline, detail.record, now)
        return self.render(
            request, "saga.html", status=200 if detail.found else 404, topic=saga_topic(sid), d=detail,
            rec=detail.record, tl=timeline, drawing=drawing, now=now, note=request.query_params.get("note"),
        )  # fmt: skip

    # -- live ----------------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        topic = request.query_params.get("topic") or OVERVIEW
        if topic not in (OVERVIEW, SAGAS) and not (topic.startswith("saga/") and _ID_RE.match(topic[5:])):
            return Response(f"unknown topic {topic!r}\n", status_code=400, media_type="text/plain")
        last = request.headers.get("last-event-id") or request.query_params.get("since") or "0"
        since = int(last) if last.isdigit() else 0
        return StreamingResponse(self._stream(topic, since), media_type="text/event-stream",
                                 headers={"x-accel-buffering": "no"})  # fmt: skip

    async def _stream(self, topic: str, since: int) -> AsyncIterator[str]:
        hub, gap = self.hub, self.settings.live_interval_s
        with hub.subscribe(topic, since) as sub:
            yield f"retry: 1000\n: topic {topic} at {hub.revision}\n\n"
            while True:
                try:
                    await asyncio.wait_for(sub.event.wait(), PING_S)
                except TimeoutError:
                    yield ": ping\n\n"
                    continue
                sub.event.clear()
                yield f"id: {sub.rev}\ndata: {sub.rev}\n\n"
                if gap:
                    await asyncio.sleep(gap)  # ok: at most one update per gap per page; changes meanwhile coalesce

    # -- actions -------------------------------------------------------------------------

    def _refused(self, request: Request) -> Response:
        return self.render(
            request, "message.html", status=403, topic=None, title="actions are off",
            message="This console is read-only: start it with --allow-actions to cancel or resubmit sagas.",
        )  # fmt: skip

    async def action(self, request: Request) -> Response:
        sid, what = request.path_params["saga_id"], request.path_params["action"]
        if what not in ("cancel", "resubmit"):
            return Response("not found\n", status_code=404, media_type="text/plain")
        if not self.settings.allow_actions:
            return self._refused(request)
        if not _ID_RE.match(sid):
            return Response("not a saga id\n", status_code=400, media_type="text/plain")
        detail = await read_detail(self.hub.client, self.keys, sid)
        problem = None
        if not detail.found:
            problem = f"there is no saga {sid!r}"
        elif what == "cancel" and detail.is_final:
            problem = f"saga {sid} has already finished ({detail.record.status if detail.record else '?'}): nothing to cancel"
        elif what == "resubmit" and not detail.is_final:
            problem = f"saga {sid} has not finished: only a finished saga can be resubmitted"
        elif what == "resubmit" and (not detail.has_input or detail.saga_type is None):
            problem = f"saga {sid}'s submission (its input) is gone: it cannot be resubmitted"
        if problem is not None:
            return self.render(request, "message.html", status=409, topic=None, title=f"cannot {what}", message=problem)
        if request.method == "GET":
            return self.render(request, "confirm.html", topic=None, what=what, d=detail)
        form: dict[str, list[str]] = parse_qs((await request.body()).decode(errors="replace"))
        origin = request.headers.get("origin")
        if not csrf_ok(self.csrf, (form.get("csrf") or [""])[0]) or (
            origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}"
        ):
            return self.render(request, "message.html", status=403, topic=None, title="refused",
                               message="the form's token did not match: open the confirmation page again")  # fmt: skip
        try:
            async with SagaClient(self.hub.client, namespace=self.keys.ns) as client:
                if what == "cancel":
                    await client.cancel(sid)
                    return RedirectResponse(f"/sagas/{sid}?note=cancel-requested", status_code=303)
                raw = json.loads(detail.input.text) if detail.input is not None and not detail.input.cut else None
                if detail.input is not None and detail.input.cut:
                    got = await self.hub.client.get(self.keys.input(sid))
                    raw = json.loads(got.kvs[0].value) if got.kvs else None
                new_id = f"{sid[:180]}-re-{uuid.uuid4().hex[:8]}"
                assert detail.saga_type is not None
                await client.submit(detail.saga_type, raw, saga_id=new_id)
                return RedirectResponse(f"/sagas/{new_id}?note=resubmitted-from-{sid[:180]}", status_code=303)
        except (ConfigError, WhizorchError) as exc:
            return self.render(request, "message.html", status=502, topic=None, title=f"{what} failed", message=str(exc))

    # -- login ---------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        target = request.query_params.get("next") or "/"
        if not target.startswith("/") or target.startswith("//"):
            target = "/"
        if not self.settings.token:
            return RedirectResponse("/", status_code=303)
        error = None
        if request.method == "POST":
            form = parse_qs((await request.body()).decode(errors="replace"))
            given = (form.get("token") or [""])[0]
            if csrf_ok(self.settings.token, given):
                response = RedirectResponse(target, status_code=303)
                response.set_cookie(COOKIE, session_value(self.settings.token), httponly=True, samesite="strict", path="/")
                return response
            error = "that is not the console's token"
        return self.render(request, "login.html", status=401 if error else 200, topic=None, target=target, error=error)


def build_app(hub: Hub, settings: ConsoleSettings) -> Guard:
    """The console as an ASGI app: the routes behind the guard."""
    c = Console(hub, settings)
    app = Starlette(
        routes=[
            Route("/", c.overview),
            Route("/sagas", c.sagas),
            Route("/sagas/{saga_id}", c.saga),
            Route("/sagas/{saga_id}/{action}", c.action, methods=["GET", "POST"]),
            Route("/events", c.events),
            Route("/login", c.login, methods=["GET", "POST"]),
            Mount("/static", app=StaticFiles(packages=[("whizorch.console", "static")]), name="static"),
        ]
    )
    return Guard(app, settings)
