"""The web console in a real browser (Debian's chromium, driven by Playwright).

One deployment for the module, on the module's shared etcd cluster in a namespace of
its own: two orchestrator candidates and a worker in each of eu, us and ap, each its
own ``python -m whizorch`` process, and two consoles (``whizorch console``), one
read-only and one with ``--allow-actions``. The tests open the pages headless and
wait on what the page shows (deadlines sized for a slow day), never on sleeps.

Chromium missing: skipped with the reason (failing under CI=true as root, where
scripts/test.sh installs it). With ``WHIZORCH_CONSOLE_SCREENSHOTS=docs/img`` the tests
write the screenshots docs/console.md shows.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import console_apps as capps
import pytest
import pytest_asyncio
from _children import Child, children

from whizorch import EtcdClient
from whizorch.saga import SagaClient
from whizorch.saga._shards import shard_of
from whizorch.testing import eventually_async

CHROMIUM = os.environ.get("WHIZORCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
TTL = 2
WAIT_MS = 30_000
SHARDS = 4
"""The namespace's shards (the orchestrators' default): each has a leader."""
"""How long a page may take to show what a test waits for (a slow day's deadline)."""
HERE = Path(__file__).resolve().parent
SHOTS = os.environ.get("WHIZORCH_CONSOLE_SCREENSHOTS")


def _missing_packages() -> str | None:
    try:
        import playwright.async_api  # noqa: F401
        import starlette  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install -e '.[dev]': the console extra and playwright)"
    return None


_SKIP = _missing_packages()  # an install without the dev extra (the oldest-protobuf pass) skips
if _SKIP is None and not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
    _SKIP = f"no chromium at {CHROMIUM} (apt-get install chromium; scripts/test.sh does it as root)"
    if os.environ.get("CI") == "true" and os.geteuid() == 0:
        pytest.fail(f"the console's browser tests cannot run in CI as root: {_SKIP}", pytrace=False)

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.slow,
    pytest.mark.skipif(_SKIP is not None, reason=_SKIP or ""),
]

if _SKIP is None:
    from playwright.async_api import BrowserContext, Page, async_playwright, expect


@attrs.frozen
class Deployment:
    endpoints: list[str]
    ns: str
    dir: Path
    read_only: str
    """URL of the read-only console."""
    actions: str
    """URL of the console started with --allow-actions."""
    roles: dict[str, Child]


def _env(directory: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHIZORCH_CONSOLE")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
    env[capps.DIR_ENV] = str(directory)
    return env


async def _line(child: Child, pattern: str, timeout: float = 60.0) -> re.Match[str]:
    """The first stdout line of ``child`` matching ``pattern``."""

    def find() -> re.Match[str] | None:
        for _, line in child.lines:
            m = re.search(pattern, line)
            if m:
                return m
        return None

    try:
        await eventually_async(lambda: find() is not None, timeout=timeout, interval=0.05)
    except AssertionError:
        raise AssertionError(f"{child.name} printed no line matching {pattern!r}\n{child.describe()}") from None
    found = find()
    assert found is not None
    return found


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment(
    etcd_endpoints: list[str], tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> AsyncIterator[Deployment]:
    """The role processes and both consoles; everything killed and the namespace deleted afterwards."""
    if request.config.getoption("--etcd-backend", default="local") == "docker":
        pytest.skip("the console's browser tests run in the local pass (they test the console, not the etcd backend)")
    ns = f"console-{uuid.uuid4().hex[:8]}"
    directory = tmp_path_factory.mktemp("console")
    latency = directory / "latency.json"
    latency.write_text(json.dumps(capps.LATENCY_MS))
    etcd = ",".join(etcd_endpoints)
    env = _env(directory)
    common = ["--etcd", etcd, "--namespace", ns]
    async with children() as started:

        async def start(name: str, *argv: str) -> Child:
            child = await Child.start(name, [sys.executable, "-m", "whizorch", *argv, *common], env=env)
            started.append(child)
            return child

        roles = {}
        for node in ("orch-1", "orch-2"):
            roles[node] = await start(node, "orchestrator", "--app", "console_apps:app", "--lease-ttl", str(TTL),
                                      "--id", node, "--events", "--latency", str(latency))  # fmt: skip
            await _line(roles[node], '"event": "orchestrator_ready"')
        for region in ("eu", "us", "ap"):
            roles[region] = await start(f"w-{region}", "worker", "--app", "console_apps:app", "--region", region,
                                        "--lease-ttl", str(TTL), "--id", f"w-{region}")  # fmt: skip
        for region in ("eu", "us", "ap"):
            await _line(roles[region], "worker_ready")
        read_only = await start("console-ro", "console", "--bind", "127.0.0.1:0")
        actions = await start("console-rw", "console", "--bind", "127.0.0.1:0", "--allow-actions")
        urls = [(await _line(c, r"(http://127\.0\.0\.1:\d+/)")).group(1) for c in (read_only, actions)]
        try:
            yield Deployment(list(etcd_endpoints), ns, directory, urls[0], urls[1], roles)
        finally:
            (directory / "release-all").touch()
            async with EtcdClient(etcd_endpoints) as client:
                await client.delete(ns + "/", prefix=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BrowserContext]:
    """Headless chromium with a fresh profile."""
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
            headless=True, viewport={"width": 1360, "height": 900},
        )  # fmt: skip
        try:
            yield context
        finally:
            await context.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: BrowserContext) -> AsyncIterator[Page]:
    """A tab; a page error (an uncaught exception in the console's script) fails the test."""
    tab = await browser.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield tab
    finally:
        await tab.close()
    assert not errors, errors


@pytest_asyncio.fixture(loop_scope="module")
async def sagas(deployment: Deployment) -> AsyncIterator[SagaClient]:
    async with EtcdClient(deployment.endpoints) as client, SagaClient(client, namespace=deployment.ns) as sc:
        yield sc


async def shot(page: Page, name: str) -> None:
    """A screenshot for docs/console.md (only when WHIZORCH_CONSOLE_SCREENSHOTS names a folder)."""
    if SHOTS:
        os.makedirs(SHOTS, exist_ok=True)
        await page.screenshot(path=str(Path(SHOTS) / name), full_page=True)


async def _held(d: Deployment, sid: str) -> None:
    await eventually_async(lambda: capps.held(d.dir, sid), timeout=30, message=f"saga {sid} holding")


async def _story(d: Deployment, sagas: SagaClient, sid: str) -> str:
    """What a failure message needs: the saga's record and history from etcd, and what every role printed."""
    rec = await sagas.get(sid)
    lines = [f"saga {sid}: {rec.status if rec else 'not found'}"]
    if rec is not None:
        lines += [f"  step {st.name}: {st.state} in {st.region} (run {st.run}, compensation run {st.comp_run})" for st in rec.steps]
        lines += [f"  {json.dumps(h, default=str)}" for h in rec.history]
    lines += [child.describe() for child in d.roles.values()]
    return "\n".join(lines)


# -- the tests -------------------------------------------------------------------------------


async def test_overview_shows_the_leader_and_three_regions(deployment: Deployment, page: Page) -> None:
    """The overview names each shard's leader (one of the two orchestrators) with its
    term, and shows eu, us and ap healthy with a worker each."""
    await page.goto(deployment.read_only)
    nodes, terms = page.locator("#leader .node"), page.locator("#leader .term")
    await expect(nodes).to_have_count(SHARDS, timeout=WAIT_MS)
    await expect(nodes).to_have_text([re.compile(r"^orch-[12]$")] * SHARDS, timeout=WAIT_MS)
    await expect(terms).to_have_text([re.compile(r"term \d+")] * SHARDS)
    for region in ("eu", "us", "ap"):
        row = page.locator(f'#regions tr[data-region="{region}"]')
        await expect(row).to_contain_text("healthy", timeout=WAIT_MS)
        await expect(row.locator("td").nth(2)).to_have_text("1")
    await expect(page.locator("#members tbody tr")).not_to_have_count(0, timeout=WAIT_MS)
    await expect(page.locator("#live")).to_contain_text("live", timeout=WAIT_MS)


async def test_list_filters_and_pages(deployment: Deployment, page: Page, sagas: SagaClient) -> None:
    """60 sagas (6 failing): pages of 25 with an 'older' link, failed only in one click, a type and id-prefix filter."""
    ids = [f"list-{i:03d}" for i in range(60)]
    failing = set(ids[::10])
    handles = [
        await sagas.submit(capps.tour if sid in failing else capps.quick, {"fail": "visit_ap"} if sid in failing else {},
                           saga_id=sid)
        for sid in ids
    ]  # fmt: skip
    results = await asyncio.gather(*(h.result(timeout_s=60, raise_on_failure=False) for h in handles))
    assert sorted(r.status for r in results) == ["compensated"] * 6 + ["completed"] * 54
    await page.goto(deployment.read_only + "sagas?prefix=list-&limit=25")
    rows = page.locator("#sagas tbody tr")
    await expect(page.locator("#matched")).to_have_text("60", timeout=WAIT_MS)
    await expect(rows).to_have_count(25)
    await expect(rows.first).to_have_attribute("data-id", "list-059")  # newest first
    await page.locator("#older").click()
    await expect(rows.first).to_have_attribute("data-id", "list-034", timeout=WAIT_MS)
    await page.locator("#older").click()
    await expect(rows).to_have_count(10, timeout=WAIT_MS)
    await expect(page.locator("#older")).to_have_count(0)
    await page.goto(deployment.read_only + "sagas?prefix=list-")
    await page.locator("#f-status").select_option("compensated")  # the form submits on change
    await expect(rows).to_have_count(6, timeout=WAIT_MS)
    assert sorted(await rows.evaluate_all("rs => rs.map(r => r.dataset.id)")) == sorted(failing)
    await page.goto(deployment.read_only + "sagas")
    await page.locator("#failed-only").click()
    await expect(page).to_have_url(re.compile(r"status=failed"), timeout=WAIT_MS)
    await expect(page.locator("#f-status")).to_have_value("failed")
    await page.goto(deployment.read_only + "sagas?prefix=list-00&type=quick")
    await expect(rows).to_have_count(9, timeout=WAIT_MS)  # list-001..009, not list-000 (a tour)
    await page.goto(deployment.read_only + "sagas?prefix=list-&status=compensated")
    await shot(page, "console-sagas.png")


async def test_a_change_appears_live_without_a_reload(deployment: Deployment, page: Page, sagas: SagaClient) -> None:
    """A saga submitted, then finishing, shows up in an open list and saga page without a reload."""
    await page.goto(deployment.read_only + "sagas")
    await expect(page.locator("#live")).to_contain_text("live", timeout=WAIT_MS)
    await page.evaluate("window.__stay = 'same document'")
    sid = f"live-{uuid.uuid4().hex[:6]}"
    await sagas.submit(capps.tour, {"hold": {"visit_eu": "eu"}}, saga_id=sid)
    row = page.locator(f'#sagas tr[data-id="{sid}"]')
    await expect(row).to_be_visible(timeout=WAIT_MS)
    await _held(deployment, sid)
    await expect(row.locator(".status")).to_have_text(re.compile("running"), timeout=WAIT_MS)
    saga_page = await page.context.new_page()
    await saga_page.goto(deployment.read_only + f"sagas/{sid}")
    await expect(saga_page.locator("#status")).to_have_text("running", timeout=WAIT_MS)
    await saga_page.evaluate("window.__stay = 'same document'")
    capps.release(deployment.dir, sid)
    await expect(saga_page.locator("#status")).to_have_text("completed", timeout=WAIT_MS)
    await expect(row.locator(".status")).to_have_text("completed", timeout=WAIT_MS)
    assert await page.evaluate("window.__stay") == "same document"
    assert await saga_page.evaluate("window.__stay") == "same document"
    await saga_page.close()


async def test_an_allowed_cancel_works_and_a_disallowed_one_is_refused(
    deployment: Deployment, page: Page, sagas: SagaClient
) -> None:
    """Read-only: no cancel button, and the action answers 403 (GET and POST); with actions: confirm, cancelled, compensated."""
    import httpx

    sid = f"cancel-{uuid.uuid4().hex[:6]}"
    await sagas.submit(capps.tour, {"hold": {"visit_us": "us"}}, saga_id=sid)
    await _held(deployment, sid)
    await page.goto(deployment.read_only + f"sagas/{sid}")
    await expect(page.locator("#read-only")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#cancel")).to_have_count(0)
    await page.goto(deployment.read_only + f"sagas/{sid}/cancel")
    await expect(page.locator("h1")).to_have_text("actions are off")
    async with httpx.AsyncClient(base_url=deployment.read_only) as http:
        assert (await http.get(f"/sagas/{sid}/cancel")).status_code == 403
        assert (await http.post(f"/sagas/{sid}/cancel", data={"csrf": "x"})).status_code == 403
    assert (await sagas.get(sid)).cancel_requested is False  # type: ignore[union-attr]

    await page.goto(deployment.actions + f"sagas/{sid}")
    await page.locator("#cancel").click()
    await expect(page.locator("#confirm")).to_be_visible(timeout=WAIT_MS)
    await shot(page, "console-confirm.png")
    await page.locator("#confirm").click()
    await expect(page.locator("#cancel-requested")).to_be_visible(timeout=WAIT_MS)
    capps.release(deployment.dir, sid)
    # roles on 2 s leases: on a starved machine sessions lapse and runs are handed over
    # (a full loaded run once took over 30 s here); the page follows whatever it takes
    try:
        await expect(page.locator("#status")).to_have_text("compensated", timeout=4 * WAIT_MS)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{await _story(deployment, sagas, sid)}") from None
    rec = await sagas.get(sid)
    assert rec is not None and rec.status == "compensated" and rec.cancel_requested


async def test_a_script_in_the_input_renders_as_text(deployment: Deployment, page: Page, sagas: SagaClient) -> None:
    """An input holding <script> and an onerror image shows as text; nothing of it runs."""
    sid = f"xss-{uuid.uuid4().hex[:6]}"
    evil = "<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\">"
    await (await sagas.submit(capps.quick, {"note": evil}, saga_id=sid)).result(timeout_s=60)
    await page.goto(deployment.read_only + f"sagas/{sid}")
    await page.locator("#input-box summary").click()
    await expect(page.locator("#input")).to_contain_text("<script>window.__pwned = 1</script>", timeout=WAIT_MS)
    assert await page.evaluate("window.__pwned") is None
    assert await page.locator("main script, main img").count() == 0
    await page.goto(deployment.read_only + "sagas?prefix=xss-")
    assert await page.evaluate("window.__pwned") is None


async def test_timeline_lanes_and_a_failover_marker_after_sigkill(
    deployment: Deployment, page: Page, sagas: SagaClient
) -> None:
    """us's only worker SIGKILLed mid-step, then the leader: lanes eu/us/ap, the lost run in us, a failover marker, a leader change."""
    sid = f"tour-{uuid.uuid4().hex[:6]}"
    handle = await sagas.submit(capps.tour, {"hold": {"visit_us": "us"}}, saga_id=sid)
    await _held(deployment, sid)
    # the leader of the saga's shard
    leader = (await sagas.client.get(f"{deployment.ns}/leader/{shard_of(sid, SHARDS)}/", prefix=True)).kvs
    node = min(leader, key=lambda kv: kv.create_revision).value.decode()
    os.kill(deployment.roles["us"].pid, signal.SIGKILL)
    os.kill(deployment.roles[node].pid, signal.SIGKILL)
    killed = time.time()
    result = await handle.result(timeout_s=60)
    assert result.status == "completed" and result.failed_over
    print(f"\nsaga {sid} done {time.time() - killed:.2f}s after the kills; regions {result.regions}")
    await page.goto(deployment.read_only + f"sagas/{sid}")
    svg = page.locator("#timeline")
    for lane in ("eu", "us", "ap", "compensation"):
        await expect(svg.locator(f'g.lane[data-lane="{lane}"]')).to_have_count(1, timeout=WAIT_MS)
    await expect(svg.locator('g.run[data-lane="us"][data-outcome="lost"]')).to_have_count(1)
    await expect(svg.locator('g.run[data-step="visit_us"][data-lane="eu"][data-outcome="ok"]')).to_have_count(1)
    await expect(svg.locator('g.marker[data-kind="failover"]')).to_have_count(1)
    await expect(svg.locator('g.marker[data-kind="leader"]')).not_to_have_count(0)
    await expect(page.locator("#markers")).to_contain_text("failover us -> eu")
    # a finished run's fence token (its result's) is the revision of the record version that dispatched it
    bars = await svg.locator("g.run").evaluate_all("gs => gs.map(g => [g.dataset.step, g.dataset.lane, g.dataset.rev])")
    runs = _results(await sagas.client.get(f"{deployment.ns}/run/", prefix=True), sid)
    checked = 0
    for step, lane, rev in bars:
        if (step, lane) in runs:
            assert int(rev) == runs[(step, lane)], (step, lane)
            checked += 1
    assert checked == 3  # visit_eu in eu, visit_us in eu after the failover, visit_ap in ap
    await expect(svg.locator('g.run[data-lane="us"][data-outcome="lost"]')).to_have_attribute(
        "data-worker", re.compile(r"^w-us \(lease [0-9a-f]+\)$")
    )  # the lost run's task named only the lease: the console remembers whose it was
    await shot(page, "console-saga.png")
    await page.goto(deployment.read_only)  # what the overview saw of it
    await expect(page.locator("#recent")).to_contain_text("region us down", timeout=WAIT_MS)
    # the killed node's shards: gone with its lease, then led by the other node (a shard's
    # next leader campaigns once the assignment gives it the shard)
    other = ({"orch-1", "orch-2"} - {node}).pop()
    await expect(page.locator("#recent")).to_contain_text(re.compile(f"leader ({node} gone|{node} → {other})"), timeout=WAIT_MS)
    await expect(page.locator("#recent")).to_contain_text(f"→ {other}", timeout=WAIT_MS)
    await shot(page, "console-overview.png")


def _results(res: Any, saga_id: str) -> dict[tuple[str, str], int]:
    """(step, region) -> fence of each successful run of the saga."""
    out = {}
    for kv in res.kvs:
        parts = kv.key.decode().split("/")  # <ns>/run/<region>/<saga>/<step>/<kind>-<attempt>
        raw = json.loads(kv.value)
        if parts[3] == saga_id and raw.get("ok") and parts[5].startswith("run-"):
            out[(raw["output"]["step"], parts[2])] = raw["fence"]
    return out
