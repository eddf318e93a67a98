"""The status page's renderer and its data: every value escaped, no payload ever shown, a
Content-Security-Policy that allows exactly the page's own script and style, and the request
count of the last minute."""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path

from orderwatch.delivery.events import make_event
from orderwatch.delivery.outbox import Deliverer
from orderwatch.ops.metrics import Metrics
from orderwatch.ops.status_page import CSP, HEADERS, Pause, StatusSnapshot, render_status_page
from orderwatch.ops.status_service import RequestWindow, StatusService, pauses_of
from orderwatch.polling.gate import Gate
from orderwatch.store.base import DeadDelivery, OrderRow
from orderwatch.store.sqlite import SqliteStore

from harness import FakeClock, settings_for

T0 = 1_700_000_000.0
EVIL = "<img src=x onerror=alert(1)>\"'&"
# What the page's own markup uses; anything else would have come from a value.
PAGE_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "p", "a",
    "section", "div", "table", "thead", "tbody", "tr", "th", "td", "meter", "ul", "li",
    "strong", "button", "label", "br", "input", "code", "script",
}  # fmt: skip


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self.blocks: dict[str, list[str]] = {"script": [], "style": []}
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs
        self._in = tag if tag in self.blocks else None

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in is not None:
            self.blocks[self._in].append(data)
        else:
            self.text.append(data)


def _parse(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    return parser


def _row(order_id: str, **kw: object) -> OrderRow:
    fields: dict[str, object] = {
        "state": "pending",
        "added_at": T0,
        "polls": 2,
        "error_streak": 0,
        "next_poll_at": T0 + 5,
        "last_error": None,
        "final_status": None,
        "finished_at": None,
    }
    return OrderRow(order_id, **{**fields, **kw})  # type: ignore[arg-type]


def _snapshot(**kw: object) -> StatusSnapshot:
    fields: dict[str, object] = {
        "now": T0 + 100,
        "store": "SQLite in /var/lib/orderwatch",
        "ready": True,
        "reason": "ok",
        "orders": {"pending": 1, "final": 1, "expired": 0, "not_found": 0},
        "deliveries": {"pending": 0, "delivered": 0, "dead": 1, "disabled": 0},
        "requests": 120,
        "window_s": 60.0,
        "rate_limit": 4.0,
        "shared_limit": False,
        "pauses": [],
        "oldest_pending": [_row("O-P1", last_error="http 503")],
        "recent_finals": [_row("O-F1", state="final", final_status="COMPLETED", finished_at=T0)],
        "dead": [DeadDelivery("evt_1", "O-F1", "webhook:hooks.example:0123", 3, "http 500", T0)],
        "can_replay": True,
    }
    return StatusSnapshot(**{**fields, **kw})  # type: ignore[arg-type]


def test_every_value_is_escaped() -> None:
    """A value that holds markup (an error text, a sink id, a reason) shows as text: it adds
    no element and no attribute to the page, and cannot leave the attribute it is in."""
    snap = _snapshot(
        store=EVIL,
        ready=False,
        reason=EVIL,
        pauses=[Pause(EVIL, EVIL, T0 + 200), Pause("API key refused", EVIL, None)],
        oldest_pending=[_row(EVIL, last_error=EVIL)],
        recent_finals=[_row(EVIL, state="final", final_status=EVIL, finished_at=T0)],
        dead=[DeadDelivery("e", EVIL, EVIL, 1, EVIL, T0)],
        store_problem=EVIL,
    )
    page = render_status_page(snap, token_required=True)
    parsed = _parse(page)
    assert set(parsed.tags) <= PAGE_TAGS, set(parsed.tags) - PAGE_TAGS
    assert parsed.tags.count("script") == 1
    assert not [name for name, _ in parsed.attrs if name.startswith("on")]
    assert ("data-replay", EVIL) in parsed.attrs  # the id, whole, inside its attribute
    text = "".join(parsed.text)
    assert text.count(EVIL) >= 10  # every field, shown as the text it is
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;&quot;&#x27;&amp;" in page


async def test_no_payload_is_ever_rendered(tmp_path: Path) -> None:
    """A final event and the last API answer hold payout links: the page, gathered from a
    real store holding both, shows the orders and never any part of a body."""
    link = "https://payout.example/redeem/SECRET-CODE-1234"
    store = await SqliteStore.open(tmp_path / "state", daemon=True, now=T0)
    try:
        await store.add_orders(["O-DONE", "O-WAIT"], T0, T0)
        claims = {c.order_id: c for c in await store.claim_due(T0, 2, "w", 30)}
        body = f'{{"id": "O-WAIT", "status": "PROCESSING", "note": "{link}"}}'.encode()
        await store.reschedule(
            claims["O-WAIT"], T0 + 9, polls=1, error_streak=1, first_404_at=None,
            last_error="http 500", last_body=body,
        )  # fmt: skip
        data = {"id": "O-DONE", "status": "COMPLETED", "items": [{"redemption_url": link}]}
        event = make_event("O-DONE", "COMPLETED", data, T0 + 1)
        assert await store.finish(claims["O-DONE"], "final", "COMPLETED", event, ["s1"])
        (delivery,) = await store.claim_deliveries(T0 + 2, 1, "w", 30, ["s1"])
        assert await store.record_delivery(delivery, T0 + 3, "dead", "http 500", None)
        settings = settings_for(tmp_path, "http://127.0.0.1:9/v2")
        service = StatusService(
            store, Gate(1.0), Deliverer(store, [], owner="t"), Metrics(), settings,
            lambda: (True, "ok"), lambda: T0 + 10,
        )  # fmt: skip
        snap = await service.snapshot()
        page = render_status_page(snap, token_required=False)
    finally:
        await store.close()
    assert snap.store_problem is None
    assert [o.order_id for o in snap.oldest_pending] == ["O-WAIT"]
    assert [o.order_id for o in snap.recent_finals] == ["O-DONE"]
    assert [d.order_id for d in snap.dead] == ["O-DONE"]
    assert "O-WAIT" in page and "O-DONE" in page and "http 500" in page
    for secret in ("payout.example", "SECRET-CODE", "redemption_url"):
        assert secret not in page, secret


def test_the_policy_allows_exactly_the_page_own_script_and_style() -> None:
    """The inline script and style run by their hashes; nothing is loaded from anywhere,
    forms post nowhere, and no page may frame this one."""
    parsed = _parse(render_status_page(_snapshot(), token_required=True))

    def digest(block: str) -> str:
        (text,) = parsed.blocks[block]
        return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()

    directives = dict(d.strip().split(" ", 1) for d in CSP.split(";"))
    assert directives["script-src"] == f"'sha256-{digest('script')}'"
    assert directives["style-src"] == f"'sha256-{digest('style')}'"
    assert directives["default-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'" and HEADERS["X-Frame-Options"] == "DENY"
    assert directives["form-action"] == "'none'"
    assert not re.search(r"https?:|\*|unsafe", CSP)
    assert HEADERS["Content-Security-Policy"] == CSP


def test_replay_controls_appear_only_where_they_can_work() -> None:
    """Replay buttons need dead deliveries and a configured sink; the token field shows only
    when the admin API has a token; the buttons wait for the script, and without it a note
    names the command instead."""
    with_token = render_status_page(_snapshot(), token_required=True)
    assert '<button type="button" data-replay="O-F1">' in with_token and 'id="token"' in with_token
    assert '<p class="note" data-nojs>Replay needs JavaScript; or run' in with_token
    assert '<div id="replay" hidden data-js>' in with_token
    assert 'id="token"' not in render_status_page(_snapshot(), token_required=False)
    for snap in (_snapshot(can_replay=False), _snapshot(dead=[])):
        assert "<button" not in render_status_page(snap, token_required=True)


def test_pauses_rate_and_store_trouble_are_told() -> None:
    """A 429 pause shows its reason and end, a refused key its reason; the rate shows as a
    share of the limit; a store that did not answer is said at the top."""
    gate = Gate(1.0, clock=lambda: 50.0)
    gate.on_rate_limited(30.0)
    gate.on_auth_failure(401)
    pauses = pauses_of(gate, T0 + 100)
    assert [(p.kind, p.until) for p in pauses] == [
        ("429 pause", T0 + 130),
        ("API key refused", None),
    ]
    snap = _snapshot(pauses=pauses, ready=False, reason=gate.refusal, store_problem="timed out")
    text = "".join(_parse(render_status_page(snap, token_required=False)).text)
    assert "429 pause: the Runa API answered 429 (too many requests), 1 in a row" in text
    assert "(in 30 s)" in text and "ends when a probe is answered" in text
    assert "Not ready: the Runa API rejects the API key" in text
    assert "120 requests to the Runa API in the last 60 s: 2.00/s of the 4/s limit (50%)" in text
    assert "The state store did not answer (timed out)" in text


def test_the_request_window_counts_about_the_last_minute() -> None:
    """The count covers the span from the newest sample at least a minute old: exact for the
    window it names, whatever the sampling interval."""
    clock, total = FakeClock(), [0]
    window = RequestWindow(lambda: total[0], clock=clock)
    assert window.last() == (0, 0.0)
    for _ in range(30):  # 150 s of 5 s samples, 10 requests in each
        clock.now += 5
        total[0] += 10
        window.sample()
    clock.now += 2
    total[0] += 4
    assert window.last() == (124, 62.0)  # since the sample 60 s before the last one
