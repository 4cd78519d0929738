"""The console at the HTTP level, on real etcd: headers, token, Host check, actions,
escaping, the live stream and its resumption (also after an etcd member is killed).

Roles run in this event loop (an orchestrator and a worker per region); the console is
a ConsoleServer on 127.0.0.1 port 0, asked with httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest

pytest.importorskip("starlette", reason="the console extra is not installed (pip install -e '.[console]')")
import console_apps as capps
import httpx
import pytest_asyncio

from whizorch import EtcdClient
from whizorch.console import ConsoleServer, ConsoleSettings
from whizorch.console._security import CSP
from whizorch.errors import ConfigError
from whizorch.saga import Orchestrator, SagaClient, Worker
from whizorch.testing import LocalEtcdCluster

pytestmark = [pytest.mark.asyncio(loop_scope="module")]

TOKEN = "s3cret-token-for-tests"
WAIT_S = 30.0


@attrs.frozen
class Roles:
    client: EtcdClient
    ns: str
    sagas: SagaClient


@contextlib.asynccontextmanager
async def _roles(client: EtcdClient, ns: str) -> AsyncIterator[SagaClient]:
    async with contextlib.AsyncExitStack() as stack:
        orch = await stack.enter_async_context(Orchestrator(client, capps.app, namespace=ns, node_id="o-1", lease_ttl_s=5))
        for region in ("eu", "us", "ap"):
            await stack.enter_async_context(
                Worker(client, capps.app, region=region, namespace=ns, worker_id=f"w-{region}", lease_ttl_s=5)
            )
        await orch.wait_leader(10)
        yield await stack.enter_async_context(SagaClient(client, namespace=ns))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def roles(etcd_endpoints: list[str]) -> AsyncIterator[Roles]:
    """Roles in a namespace of their own, two sagas done (one with <script> in its input); deleted afterwards."""
    ns = f"cs-{uuid.uuid4().hex[:8]}"
    async with EtcdClient(etcd_endpoints, timeout_s=3.0, retry_deadline_s=5.0) as client:
        try:
            async with _roles(client, ns) as sagas:
                await sagas.execute(capps.quick, {"note": "<script>alert('x')</script>"}, saga_id="xss", timeout_s=WAIT_S)
                await sagas.execute(capps.tour, {}, saga_id="done-1", timeout_s=WAIT_S)
                yield Roles(client, ns, sagas)
        finally:
            await client.delete(ns + "/", prefix=True)


@contextlib.asynccontextmanager
async def console(r: Roles, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A console on the roles' namespace and an HTTP client on it."""
    async with ConsoleServer(r.client, ConsoleSettings(port=0, **settings), namespace=r.ns) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http:
            yield http


async def test_every_answer_carries_the_csp_and_no_inline_code(roles: Roles) -> None:
    """Pages, fragments, errors and assets carry the CSP, nosniff and frame denial; pages hold no inline script or style."""
    async with console(roles) as http:
        for path, status in (("/", 200), ("/sagas", 200), ("/sagas/xss", 200), ("/sagas/xss?fragment=1", 200),
                             ("/sagas/nope", 404), ("/static/console.js", 200), ("/sagas/xss/cancel", 403)):  # fmt: skip
            res = await http.get(path)
            assert res.status_code == status, path
            assert res.headers["content-security-policy"] == CSP
            assert res.headers["x-content-type-options"] == "nosniff"
            assert res.headers["x-frame-options"] == "DENY"
            if res.headers["content-type"].startswith("text/html"):
                assert not re.search(r"<script(?![^>]*\bsrc=)", res.text), path
                assert " style=" not in res.text and "<style" not in res.text, path
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP and "default-src 'none'" in CSP


async def test_user_data_is_escaped(roles: Roles) -> None:
    """A <script> in a saga's input arrives as text (&lt;script&gt;), in the page and in its outputs."""
    async with console(roles) as http:
        page = (await http.get("/sagas/xss")).text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert "<script>alert" not in page


async def test_a_token_guards_every_route_but_login(roles: Roles) -> None:
    """With a token: 401 (or the login form for a browser) without it; Bearer or the login cookie let in; a wrong token is refused."""
    async with console(roles, token=TOKEN) as http:
        assert (await http.get("/sagas")).status_code == 401
        assert (await http.get("/events?topic=overview")).status_code == 401
        assert (await http.get("/sagas/xss/cancel")).status_code == 401
        browser = await http.get("/sagas?status=failed", headers={"accept": "text/html"})
        assert browser.status_code == 303 and browser.headers["location"] == "/login?next=%2Fsagas%3Fstatus%3Dfailed"
        assert (await http.get("/login")).status_code == 200 and (await http.get("/static/console.css")).status_code == 200
        assert (await http.get("/sagas", headers={"authorization": f"Bearer {TOKEN}"})).status_code == 200
        assert (await http.get("/sagas", headers={"authorization": "Bearer wrong-token-wrong-token"})).status_code == 401
        wrong = await http.post("/login?next=/sagas", data={"token": "not-it"})
        assert wrong.status_code == 401 and "not the console" in wrong.text
        right = await http.post("/login?next=/sagas", data={"token": TOKEN})
        assert right.status_code == 303 and right.headers["location"] == "/sagas"
        cookie = right.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
        assert (await http.get("/sagas")).status_code == 200  # the cookie jar holds the login


async def test_a_loopback_console_answers_only_to_a_loopback_host(roles: Roles) -> None:
    """Bound to 127.0.0.1, a request naming another Host (DNS rebinding) is refused with 421."""
    async with console(roles) as http:
        assert (await http.get("/", headers={"host": "evil.example:8470"})).status_code == 421
        assert (await http.get("/", headers={"host": "localhost:8470"})).status_code == 200


async def test_a_non_loopback_bind_without_a_token_is_refused() -> None:
    """ConsoleSettings and `whizorch console --bind 0.0.0.0:0` refuse to serve beyond loopback without a token, naming --token."""
    with pytest.raises(ConfigError, match="--token"):
        ConsoleSettings(host="0.0.0.0")
    with pytest.raises(ConfigError, match="16 characters"):
        ConsoleSettings(host="0.0.0.0", token="short")
    assert ConsoleSettings(host="0.0.0.0", token=TOKEN).token == TOKEN
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "whizorch", "console", "--bind", "0.0.0.0:0", "--etcd", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 2, done
    assert "not a loopback address, without a token" in done.stderr and "--token" in done.stderr
    assert "Traceback" not in done.stderr


async def test_actions_are_refused_unless_allowed(roles: Roles) -> None:
    """A read-only console answers 403 to cancel and resubmit, GET and POST, and writes nothing."""
    sid = f"held-{uuid.uuid4().hex[:6]}"
    await roles.sagas.submit(capps.quick, {}, saga_id=sid)
    async with console(roles) as http:
        for what in ("cancel", "resubmit"):
            assert (await http.get(f"/sagas/{sid}/{what}")).status_code == 403
            assert (await http.post(f"/sagas/{sid}/{what}", data={"csrf": "x"})).status_code == 403
    assert (await roles.client.get(f"{roles.ns}/cancel/{sid}")).kvs == []


async def test_allowed_actions_need_the_forms_token_and_origin(roles: Roles) -> None:
    """With actions: a POST without the confirmation form's token, or from another origin, is refused; a confirmed resubmit starts a new saga with the same input."""
    async with console(roles, allow_actions=True) as http:
        confirm = await http.get("/sagas/done-1/resubmit")
        assert confirm.status_code == 200
        csrf = re.search(r'name="csrf" value="([^"]+)"', confirm.text)
        assert csrf is not None
        assert (await http.post("/sagas/done-1/resubmit", data={"csrf": "forged"})).status_code == 403
        cross = await http.post("/sagas/done-1/resubmit", data={"csrf": csrf.group(1)}, headers={"origin": "http://evil.example"})
        assert cross.status_code == 403
        assert (await http.get("/sagas/done-1/cancel")).status_code == 409  # finished: nothing to cancel
        done = await http.post("/sagas/done-1/resubmit", data={"csrf": csrf.group(1)})
        assert done.status_code == 303
        new_id = done.headers["location"].split("/")[2].split("?")[0]
        assert new_id.startswith("done-1-re-")
    result = await roles.sagas.wait(new_id, timeout_s=WAIT_S)
    assert result.status == "completed"
    sub = await roles.client.get(f"{roles.ns}/submit/{new_id}")
    assert b'"saga":"tour","input":{}' in sub.kvs[0].value


async def _next_event(lines: AsyncIterator[str], timeout: float = WAIT_S) -> int:
    """The revision of the stream's next event (comments and pings skipped)."""

    async def read() -> int:
        async for line in lines:
            if line.startswith("id: "):
                return int(line[4:])
        raise AssertionError("the stream ended")

    return await asyncio.wait_for(read(), timeout)


async def test_the_live_stream_wakes_a_page_and_resumes_from_last_event_id(roles: Roles) -> None:
    """A saga page's stream gets the revision of a change to its saga; a reconnect with an older Last-Event-ID is answered at once."""
    sid = f"live-{uuid.uuid4().hex[:6]}"
    async with console(roles, live_interval_s=0) as http:
        start = (await roles.client.get(f"{roles.ns}/leader/", prefix=True)).header.revision
        async with http.stream("GET", f"/events?topic=saga/{sid}&since={start}") as stream:
            lines = stream.aiter_lines()
            await roles.sagas.submit(capps.quick, {}, saga_id=sid)
            first = await _next_event(lines)
            assert first > start
        async with http.stream("GET", f"/events?topic=saga/{sid}", headers={"last-event-id": str(first - 1)}) as again:
            assert await _next_event(again.aiter_lines()) >= first
        # the page itself: the saga as the stream announced it
        await roles.sagas.wait(sid, timeout_s=WAIT_S)
        page = await http.get(f"/sagas/{sid}?fragment=1")
        assert 'id="fragment"' in page.text and "completed" in page.text and "<html" not in page.text


@pytest.mark.slow
async def test_live_updates_resume_after_the_console_s_etcd_member_is_killed(
    etcd_cluster: LocalEtcdCluster, request: pytest.FixtureRequest
) -> None:
    """The member the console reads from is SIGKILLed: the stream goes on, and a saga finishing later still reaches it."""
    if request.config.getoption("--etcd-backend", default="local") == "docker":
        pytest.skip("finds the killed member by its local client port: the local pass runs it")
    ns = "cs-kill"
    async with EtcdClient(etcd_cluster.endpoints, timeout_s=3.0, retry_deadline_s=10.0) as client, _roles(client, ns) as sagas:
        r = Roles(client, ns, sagas)
        async with console(r, live_interval_s=0) as http, http.stream("GET", "/events?topic=sagas&since=1") as stream:
            lines = stream.aiter_lines()
            await _next_event(lines)  # the initial catch-up
            used = client.endpoint
            member = next(m for m in etcd_cluster.members if used.endswith(f":{m.client_port}"))
            member.kill()
            result = await sagas.execute(capps.tour, {}, saga_id="after-kill", timeout_s=WAIT_S)
            assert result.status == "completed"
            rev = await _next_event(lines)
            while (await http.get("/sagas?prefix=after-kill")).text.count('data-id="after-kill"') == 0:
                rev = await _next_event(lines)  # each event is a change the page would fetch
            assert rev > 0


@pytest.mark.slow
async def test_demo_console_prints_its_url_and_serves_the_run(etcd_endpoints: list[str]) -> None:
    """`whizorch demo --console` prints the console's URL, which shows the demo's namespace live; SIGTERM stops both."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "whizorch", "demo", "--etcd", ",".join(etcd_endpoints), "--duration", "30", "--plain",
        "--console", "127.0.0.1:0", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    url = namespace = None
    try:

        async def find() -> None:
            nonlocal url, namespace
            assert proc.stdout is not None
            while url is None:
                line = (await proc.stdout.readline()).decode()
                assert line, "the demo ended before printing the console's URL"
                found = re.search(r"namespace (demo-\S+)", line)
                namespace = found.group(1) if found else namespace
                found = re.search(r"console: (http://127\.0\.0\.1:\d+/)", line)
                url = found.group(1) if found else None

        await asyncio.wait_for(find(), 120)
        assert url is not None and namespace is not None
        async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
            page = await http.get("/")
            assert page.status_code == 200 and namespace in page.text and "orch-" in page.text
    finally:
        if proc.returncode is None:
            proc.send_signal(15)
        await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 128 + 15
    async with httpx.AsyncClient(timeout=5) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(url)  # the console stopped with the demo
