"""The status page of a running daemon: over HTTP, and in a real browser (Debian's chromium,
driven by Playwright): what it shows, replay from the page, other sites' attempts to replay,
a 360 px screen, and JavaScript off.

The browser tests are skipped where chromium is not installed (`apt-get install chromium`;
.ci/run installs it), unless CHROMIUM_REQUIRED=1 or CI=true, where that is a failure."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web

from orderwatch.devtools.receiver import Receiver, running_receiver
from orderwatch.devtools.simulator import SimOptions, Simulator, running_simulator
from orderwatch.ops.daemon import Daemon

from harness import API_KEY, REPO, SECRET, free_port, http, running_daemon, settings_for, until

TOKEN = "a-token-for-the-admin-api"
# The screenshot in docs/ is this test's, taken again when asked (ORDERWATCH_SCREENSHOT=1):
# otherwise every run would leave the work tree changed.
SCREENSHOT = REPO / "docs" / "img" / "status-page.png"
SAVE_SCREENSHOT = os.environ.get("ORDERWATCH_SCREENSHOT") == "1"
CHROMIUM = shutil.which("chromium")
REQUIRED = os.environ.get("CHROMIUM_REQUIRED") == "1" or os.environ.get("CI") == "true"


@dataclass
class Scene:
    daemon: Daemon
    sim: Simulator
    receiver: Receiver
    base: str  # the admin listener's URL
    dead_event_id: str  # the webhook-id the dead delivery's attempts carried


@asynccontextmanager
async def scene(tmp_path: Path, **admin: Any) -> AsyncIterator[Scene]:
    """A daemon on the simulator with an admin listener and a real webhook receiver: one
    order whose delivery is dead (the receiver failed both attempts), two delivered, two
    still pending."""
    port = free_port()
    receiver = Receiver(SECRET, fail_first=2)
    opts = SimOptions(api_key=API_KEY, complete_after=0.2)
    async with running_simulator(opts) as rs, running_receiver(receiver) as url:
        rs.sim.create(["O-WAIT1", "O-WAIT2"], complete_after=3600)
        settings = settings_for(
            tmp_path,
            rs.base_url,
            admin={"listen": f"127.0.0.1:{port}", **admin},
            webhooks=[{"url": url, "secret": SECRET, "retry_schedule": ["50ms"]}],
        )
        async with running_daemon(settings) as d:
            assert d.store is not None
            store = d.store
            await d.add_orders(["O-DEAD1"])

            async def dead() -> bool:
                return (await store.delivery_counts())["dead"] == 1

            await until(dead)
            dead_id = receiver.attempt_ids[0]
            await d.add_orders(["O-OK1", "O-OK2", "O-WAIT1", "O-WAIT2"])

            async def delivered() -> bool:
                return len(receiver.events) == 2

            await until(delivered)
            yield Scene(d, rs.sim, receiver, f"http://127.0.0.1:{port}", dead_id)


async def _delivery_state(s: Scene, order_id: str) -> str:
    assert s.daemon.store is not None
    (row,) = await s.daemon.store.get_deliveries([order_id])
    return row.state


# -- over HTTP ---------------------------------------------------------------------------------


async def test_the_page_and_replay_over_http_on_loopback(tmp_path: Path) -> None:
    """Without a token (loopback only) the page reads as HTML under a strict policy; a
    replay must be JSON, from no other site, to a loopback Host, and then it delivers the
    dead event again with its webhook-id."""
    async with scene(tmp_path) as s:
        received = s.sim.received
        status, page = await http("GET", s.base + "/")
        assert status == 200 and "O-DEAD1" in page and "O-WAIT1" in page
        # the process is younger than a minute: its every answered request is counted
        sent = re.search(r"(\d+) requests to the Runa API in the last \d+ s", page)
        assert sent is not None
        assert received - 8 <= int(sent[1]) <= s.sim.received  # 8: requests in flight
        # a form's text/plain body that is JSON all the same: refused, as is any other site
        replay = s.base + "/replay"
        body = json.dumps({"ids": ["O-DEAD1"]})
        plain = {"Content-Type": "text/plain"}
        assert (await http("POST", replay, data=body, headers=plain))[0] == 415
        cross = {"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}
        assert (await http("POST", replay, data=body, headers=cross))[0] == 403
        same_site = {**cross, "Sec-Fetch-Site": "same-site"}  # another port of this host
        assert (await http("POST", replay, data=body, headers=same_site))[0] == 403
        rebound = {"Content-Type": "application/json", "Host": "evil.example"}
        assert (await http("POST", replay, data=body, headers=rebound))[0] == 403
        assert await _delivery_state(s, "O-DEAD1") == "dead"
        assert (await http("POST", replay, json={"ids": ["O-WAIT1"]}))[0] == 404
        assert (await http("POST", replay, json={"ids": ["../x"]}))[0] == 400
        assert (await http("POST", replay, json={"ids": ["O-1"] * 101}))[0] == 413
        status, text = await http("POST", replay, json={"ids": ["O-DEAD1", "O-NONE"]})
        assert status == 200, text
        assert json.loads(text) == {"queued": 1, "replayed": ["O-DEAD1"], "no_event": ["O-NONE"]}

        async def again() -> bool:
            return any(e.order_id == "O-DEAD1" for e in s.receiver.events)

        await until(again)
        (event,) = [e for e in s.receiver.events if e.order_id == "O-DEAD1"]
        assert event.event_id == s.dead_event_id and event.verified


async def test_the_page_and_replay_headers(tmp_path: Path) -> None:
    """The page is HTML that no other page may frame, and that loads and runs nothing but its
    own script and style; it is never cached."""
    async with scene(tmp_path) as s, ClientSession() as client, client.get(s.base + "/") as r:
        assert r.status == 200 and r.content_type == "text/html"
        csp = r.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["Cache-Control"] == "no-store"


async def test_off_loopback_the_page_and_replay_need_the_token(tmp_path: Path) -> None:
    """Off loopback the page holds order ids: without the token it is a 401, like every
    route but the probes; replay too."""
    port = free_port()
    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        admin = {"listen": f"0.0.0.0:{port}", "token": TOKEN}
        settings = settings_for(tmp_path, rs.base_url, admin=admin)
        async with running_daemon(settings):
            base = f"http://127.0.0.1:{port}"
            auth = {"Authorization": f"Bearer {TOKEN}"}
            assert (await http("GET", base + "/"))[0] == 401
            status, page = await http("GET", base + "/", headers=auth)
            assert status == 200 and "Orders by state" in page
            assert (await http("POST", base + "/replay", json={"ids": ["O-1"]}))[0] == 401
            replay = await http("POST", base + "/replay", json={"ids": ["O-1"]}, headers=auth)
            assert replay[0] == 404  # past the token: the order has no final event


# -- in a browser ------------------------------------------------------------------------------


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Debian's chromium under Playwright (never a browser of Playwright's own download)."""
    if CHROMIUM is None:
        why = "Debian's chromium is not installed (apt-get install chromium; .ci/run does)"
        if REQUIRED:
            pytest.fail(f"{why}; CHROMIUM_REQUIRED=1 or CI=true makes this a failure")
        pytest.skip(why)
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM)
        try:
            yield chromium
        finally:
            await chromium.close()


def _watch_console(page: Any) -> list[str]:
    """Errors the page logs (a script or style the policy blocked shows here)."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


async def _counts(page: Any) -> dict[str, int]:
    cells = await page.locator("#orders table").first.locator("tbody tr").all_inner_texts()
    return {state: int(n) for state, n in (c.split("\t") for c in cells)}


async def test_the_page_in_a_browser(tmp_path: Path, browser: Any) -> None:
    """The page shows the running daemon's counts; a replay clicked with the token typed in
    delivers the dead event again with its webhook-id (refused before the token is typed);
    the token lives in the tab, never in a cookie. At 360 px nothing overflows the page (the
    tables scroll in their boxes); with JavaScript off it reads, without the buttons."""
    async with scene(tmp_path, token=TOKEN) as s:
        assert s.daemon.store is not None
        page = await browser.new_page(viewport={"width": 1100, "height": 800})
        errors = _watch_console(page)
        await page.goto(s.base + "/")
        assert await _counts(page) == await s.daemon.store.counts()
        assert (await _counts(page))["pending"] == 2
        assert await page.locator("#dead tbody tr").count() == 1
        shot = await page.screenshot(full_page=True)
        assert shot.startswith(b"\x89PNG")
        if SAVE_SCREENSHOT:
            SCREENSHOT.write_bytes(shot)
        assert errors == []  # nothing the policy blocked

        narrow = await browser.new_page(viewport={"width": 360, "height": 740})
        await narrow.goto(s.base + "/")
        assert await narrow.evaluate("document.documentElement.scrollWidth") <= 360
        scrolls = await narrow.evaluate(
            "[...document.querySelectorAll('.scroll')].some(b => b.scrollWidth > b.clientWidth)"
        )
        assert scrolls  # a table wider than the screen scrolls inside its box

        context = await browser.new_context(java_script_enabled=False)
        off = await context.new_page()
        await off.goto(s.base + "/")
        assert await _counts(off) == await s.daemon.store.counts()
        assert "O-WAIT1" in await off.locator("#pending").inner_text()
        assert not await off.locator("button[data-replay]").is_visible()
        assert await off.get_by_text("Replay needs JavaScript").is_visible()
        assert not await page.get_by_text("Replay needs JavaScript").is_visible()
        await context.close()

        button = page.locator('button[data-replay="O-DEAD1"]')
        await button.click()
        await page.locator("#replay-result", has_text="Refused (401)").wait_for()
        assert await _delivery_state(s, "O-DEAD1") == "dead"
        await page.fill("#token", TOKEN)
        await button.click()
        await page.locator("#replay-result", has_text="Queued 1 delivery").wait_for()

        async def again() -> bool:
            return any(e.order_id == "O-DEAD1" for e in s.receiver.events)

        await until(again)
        (event,) = [e for e in s.receiver.events if e.order_id == "O-DEAD1"]
        assert event.event_id == s.dead_event_id and event.verified
        assert await page.evaluate("document.cookie") == ""
        stored = await page.evaluate("sessionStorage.getItem('orderwatch-admin-token')")
        assert stored == TOKEN
        assert [e for e in errors if "status of 401" not in e] == []


EVIL_FORM = """<!doctype html><body>
<form method="POST" action="{replay}" enctype="text/plain">
<input name='{{"ids": ["O-DEAD1"], "x": "' value='"}}'></form>
<script>document.forms[0].submit()</script></body>"""

EVIL_FETCH = """<!doctype html><body><script>
var body = JSON.stringify({{ids: ["O-DEAD1"]}});
var json = fetch("{replay}", {{method: "POST", headers: {{"Content-Type": "application/json"}},
                              body: body}}).then(r => "answered " + r.status, e => "blocked");
var plain = fetch("{replay}", {{method: "POST", mode: "no-cors", body: body}})
  .then(r => "sent", e => "blocked");
Promise.all([json, plain]).then(r => {{ document.title = "done " + r.join(" "); }});
</script></body>"""


async def test_other_sites_cannot_replay(tmp_path: Path, browser: Any) -> None:
    """On loopback without a token, a page of another site open in the same browser cannot
    replay: neither a form that posts JSON as text/plain, nor a fetch (its preflight is
    never approved), nor a no-cors fetch. The dead delivery stays dead."""
    async with scene(tmp_path) as s:
        replay = s.base + "/replay"
        seen: list[str] = []

        async def evil(request: web.Request) -> web.Response:
            page = EVIL_FORM if request.path == "/form" else EVIL_FETCH
            return web.Response(text=page.format(replay=replay), content_type="text/html")

        app = web.Application()
        app.router.add_get("/{kind}", evil)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        evil_base = f"http://localhost:{runner.addresses[0][1]}"  # another site: localhost
        try:
            page = await browser.new_page()
            page.on("response", lambda r: seen.append(f"{r.request.method} {r.status}"))
            async with page.expect_response(replay) as posted:
                await page.goto(evil_base + "/form")
            assert (await posted.value).status in (403, 415)
            await page.goto(evil_base + "/fetch")
            await page.wait_for_function("document.title.startsWith('done')")
            assert await page.title() == "done blocked sent"
        finally:
            await runner.cleanup()
        assert await _delivery_state(s, "O-DEAD1") == "dead"
        assert not any(e.order_id == "O-DEAD1" for e in s.receiver.events)
        assert "POST 200" not in seen
