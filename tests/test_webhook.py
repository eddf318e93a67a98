"""The webhook sink on its own, against real receivers on port 0: Standard Webhooks signing
checked by the reference library, exact bytes, statuses, redirects, Retry-After, errors, and
what never reaches an outcome or a log line."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import Any

import pytest
import structlog
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from orderwatch.config.models import WebhookSettings
from orderwatch.core.errors import UsageError
from orderwatch.core.version import __version__
from orderwatch.delivery.events import make_event
from orderwatch.delivery.sinks.base import AttemptResult
from orderwatch.delivery.sinks.webhook import WebhookSink
from orderwatch.devtools.receiver import Receiver, running_receiver
from orderwatch.store.base import EventRecord

from harness import SECRET, free_port

OLD_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
OTHER_SECRET = "whsec_dGhpcyBpcyBub3QgdGhlIHJpZ2h0IGtleQ=="
PAYOUT = "https://payouts.example/redeem/very-secret-link"
TOKEN = "tok3n-in-the-query"


class FakeClock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


def event(order_id: str = "O-W1") -> EventRecord:
    data = {"id": order_id, "status": "COMPLETED", "note": "Grüße ✓", "payout": {"url": PAYOUT}}
    return make_event(order_id, "COMPLETED", data, time.time())


def sink(url: str, clock: Any = time.time, **hook: Any) -> WebhookSink:
    settings = WebhookSettings.model_validate({"url": url, "secret": SECRET, **hook})
    return WebhookSink(settings, clock=clock)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    r = Receiver(SECRET)
    async with running_receiver(r) as url:
        yield r, url


async def attempt(s: WebhookSink, ev: EventRecord) -> AttemptResult:
    try:
        return await s.attempt(ev)
    finally:
        await s.close()


async def test_exact_bytes_and_headers_verify_under_each_rotated_secret(
    receiver: tuple[Receiver, str],
) -> None:
    """The body is the event's bytes verbatim; with two secrets, the reference library
    verifies under either one alone and rejects a third; the fixed headers are present."""
    r, url = receiver
    ev = event()
    result = await attempt(sink(url, secrets=[OLD_SECRET]), ev)
    assert result == AttemptResult(True, "http 204")
    (got,) = r.events
    assert got.verified and got.body == ev.body
    assert got.headers["webhook-id"] == ev.event_id
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"] == f"orderwatch/{__version__}"
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    for secret in (SECRET, OLD_SECRET):
        assert Webhook(secret).verify(got.body, got.headers)["data"]["id"] == "O-W1"
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER_SECRET).verify(got.body, got.headers)


async def test_timestamp_is_fresh_per_attempt_and_id_is_stable(
    receiver: tuple[Receiver, str],
) -> None:
    """Two attempts of one event carry the same webhook-id and the injected clock's time."""
    r, url = receiver
    clock = FakeClock()
    s, ev = sink(url, clock), event()
    try:
        await s.attempt(ev)
        clock.now += 7
        await s.attempt(ev)
    finally:
        await s.close()
    first, second = (e.headers for e in r.events)
    assert first["webhook-id"] == second["webhook-id"] == ev.event_id
    assert int(second["webhook-timestamp"]) - int(first["webhook-timestamp"]) == 7
    assert int(first["webhook-timestamp"]) == int(clock.now) - 7
    assert all(e.verified for e in r.events)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
async def test_any_2xx_is_delivered(status: int) -> None:
    """Every 2xx status counts as delivered."""
    r = Receiver(SECRET, fail_first=1, fail_status=status)
    async with running_receiver(r) as url:
        result = await attempt(sink(url), event())
    assert result == AttemptResult(True, f"http {status}")


@pytest.mark.parametrize("status", [400, 404, 410, 429, 500, 502, 503])
async def test_other_statuses_are_retried(status: int) -> None:
    """4xx (410 Gone too, as SPEC says) and 5xx are failed attempts to retry, named by their
    status only."""
    r = Receiver(SECRET, fail_first=1, fail_status=status)
    async with running_receiver(r) as url:
        result = await attempt(sink(url), event())
    assert result == AttemptResult(False, f"http {status}", retry=True)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_not_followed(status: int) -> None:
    """A redirect is a failed attempt; the Location it points at never receives anything."""
    target = Receiver(SECRET)
    async with running_receiver(target) as target_url:
        moved = Receiver(
            SECRET, fail_first=1, fail_status=status, fail_headers={"Location": target_url}
        )
        async with running_receiver(moved) as url:
            result = await attempt(sink(url), event())
    assert result == AttemptResult(False, f"http {status}", retry=True)
    assert moved.attempts == 1 and target.attempts == 0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        ("+date 600", 600.0),
        ("86400", 3600.0),  # capped at an hour
        ("soon", None),
        (None, None),
    ],
)
async def test_retry_after_seconds_or_http_date_capped_at_an_hour(
    header: str | None, expected: float | None
) -> None:
    """Retry-After on a 429 is read as seconds or an HTTP-date (against the injected clock)
    and capped at one hour; absent or unparsable means no extra wait."""
    clock = FakeClock()
    if header == "+date 600":
        header = formatdate(clock.now + 600, usegmt=True)
    headers = {"Retry-After": header} if header is not None else {}
    r = Receiver(SECRET, fail_first=1, fail_status=429, fail_headers=headers)
    async with running_receiver(r) as url:
        result = await attempt(sink(url, clock), event())
    assert (result.delivered, result.outcome, result.retry_after_s) == (False, "http 429", expected)


async def test_hanging_endpoint_times_out() -> None:
    """An endpoint that accepts and never answers is a "timeout" after the configured time."""
    r = Receiver(SECRET)
    r.hang = True
    async with running_receiver(r) as url:
        result = await attempt(sink(url, timeout="200ms"), event())
    assert result == AttemptResult(False, "timeout")
    assert r.attempts == 1


async def test_a_2xx_counts_when_its_headers_arrive_whatever_its_body_does() -> None:
    """A receiver that answered 200 has the event; if its body then stalls, the attempt is
    still delivered (it was a "timeout", and the event was sent again and again)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=200)
        resp.content_length = 100  # promised, never sent
        await resp.prepare(request)
        await asyncio.sleep(5)
        return resp

    app = web.Application()
    app.router.add_post("/hook", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        result = await attempt(sink(url, timeout="3s"), event())
    finally:
        await runner.cleanup()
    assert result == AttemptResult(True, "http 200")


async def test_errors_and_logs_never_show_url_query_secret_or_body() -> None:
    """Refused connections and resets give a short outcome; no outcome or log line carries the
    URL's query or userinfo, the secret, or the body (payout links)."""
    dead_url = f"http://user:pw-{TOKEN}@127.0.0.1:{free_port()}/hook?token={TOKEN}"

    async def reset(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()  # connection reset mid-request
        await asyncio.sleep(1)
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", reset)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    reset_url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook?token={TOKEN}"
    try:
        with structlog.testing.capture_logs() as logs:
            refused = await attempt(sink(dead_url), event())
            was_reset = await attempt(sink(reset_url), event())
    finally:
        await runner.cleanup()
    assert refused.outcome.startswith("connection error") and refused.retry
    assert was_reset.outcome.startswith("connection error") and was_reset.retry
    shown = repr(logs) + refused.outcome + was_reset.outcome
    for secret in (TOKEN, SECRET, SECRET.removeprefix("whsec_"), PAYOUT, "127.0.0.1"):
        assert secret not in shown


def test_sink_id_is_stable_and_hides_path_query_and_userinfo() -> None:
    """The id is `webhook:<host>:<16 hex>`: the same for the same URL, different for another,
    and without userinfo, path or query."""
    url = f"https://bob:pw@hooks.example:8443/runa/x?token={TOKEN}"
    a, b = sink(url), sink(url)
    other = sink("https://hooks.example/runa/y")
    prefix, host, digest = a.id.split(":")
    assert (prefix, host, len(digest)) == ("webhook", "hooks.example", 16)
    assert a.id == b.id != other.id
    for part in ("bob", "pw", "runa", TOKEN, "8443"):
        assert part not in a.id


def test_secret_that_is_not_base64_is_a_usage_error() -> None:
    """A secret the Standard Webhooks library cannot use is a UsageError naming the sink, not
    the secret."""
    # The last two decode, leniently, to another key: "-" and "_" (URL-safe base64, what
    # secrets.token_urlsafe makes) are dropped, so a 24-byte secret signed with 18 bytes
    # and no receiver holding the real key could verify a single delivery.
    urlsafe = "whsec_" + base64.urlsafe_b64encode(bytes([0xFB, 0xFF, 0xBF] * 8)).decode()
    for bad in ("whsec_", "whsec_NOTBASE6X", "whsec_abc-def_ghij", urlsafe):
        with pytest.raises(UsageError) as info:
            sink("https://hooks.example/h", secret=bad)
        assert str(info.value).startswith("webhook webhook:hooks.example:")
        assert "NOTBASE6X" not in str(info.value)


def test_a_secret_without_its_base64_padding_is_the_same_key() -> None:
    """Secrets pasted without their trailing '=' were refused ("Error"), though they name
    the same key and the Standard Webhooks library pads them itself."""
    key = bytes(range(32))
    padded = "whsec_" + base64.b64encode(key).decode()
    assert padded.endswith("=")
    unpadded = padded.rstrip("=")
    a = sink("https://hooks.example/h", secret=padded)
    b = sink("https://hooks.example/h", secret=unpadded)
    event = make_event("O-1", "COMPLETED", {"id": "O-1", "status": "COMPLETED"}, 0.0)
    assert a.headers(event, 1_700_000_000.0) == b.headers(event, 1_700_000_000.0)
    with pytest.raises(UsageError, match="base64"):
        sink("https://hooks.example/h", secret=unpadded[:-2])  # a length no padding mends
