"""The status page (`GET /` on the admin listener): what an operator without Prometheus needs
to see, rendered as plain HTML from a `StatusSnapshot`. A pure function: no I/O, no clock.

Every value is escaped. Nothing here can show a payload: the snapshot holds order rows and
delivery rows, never an event body or an API answer (those hold payout links). The page reads
with JavaScript off; its one inline script (allowed by its hash in the Content-Security-Policy,
nothing else may run or load) only adds the replay buttons, which POST JSON with the token in
an Authorization header: no cookie, so another site's page cannot act with it.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

from orderwatch.core.version import __version__
from orderwatch.store.base import DeadDelivery, OrderRow


@dataclass(frozen=True, slots=True)
class Pause:
    """A pause of all polling: a 429 back-off, or the API refusing the key."""

    kind: str
    reason: str
    until: float | None  # wall-clock end; None: until a probe is answered


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    """Everything the page shows, gathered at one moment (`now`, wall-clock seconds)."""

    now: float
    store: str
    ready: bool
    reason: str
    orders: Mapping[str, int]
    deliveries: Mapping[str, int]
    requests: int  # GET requests this process sent in the last `window_s` seconds
    window_s: float
    rate_limit: float  # requests per second, as configured
    shared_limit: bool  # the limit is shared by every replica of a PostgreSQL store
    pauses: Sequence[Pause]
    oldest_pending: Sequence[OrderRow]
    recent_finals: Sequence[OrderRow]
    dead: Sequence[DeadDelivery]
    can_replay: bool  # sinks are configured
    store_problem: str | None = None  # set when the store did not answer: lists are empty


CSS = """
:root { color-scheme: light dark; font-family: system-ui, sans-serif; line-height: 1.4; }
body { margin: 0 auto; padding: 0.75rem; max-width: 72rem; }
h1 { font-size: 1.4rem; margin: 0.2rem 0; }
h2 { font-size: 1.1rem; margin: 1.4rem 0 0.4rem; }
p, li { overflow-wrap: anywhere; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { text-align: left; padding: 0.25rem 0.8rem 0.25rem 0; white-space: nowrap;
  border-bottom: 1px solid #8886; vertical-align: top; }
.num { text-align: right; }
.ok { color: #1a7f37; }
.bad { color: #cf222e; font-weight: 600; }
.note { opacity: 0.75; font-size: 0.85rem; }
meter { width: 12rem; max-width: 100%; }
input, button { font: inherit; }
input { max-width: 100%; }
"""

SCRIPT = """
"use strict";
(function () {
  var KEY = "orderwatch-admin-token";
  var field = document.getElementById("token");
  var out = document.getElementById("replay-result");
  document.querySelectorAll("[data-js]").forEach(function (e) { e.hidden = false; });
  document.querySelectorAll("[data-nojs]").forEach(function (e) { e.hidden = true; });
  if (field) {
    try { field.value = sessionStorage.getItem(KEY) || ""; } catch (e) {}
  }
  function say(text) { out.textContent = text; }
  function replay(button) {
    var id = button.getAttribute("data-replay");
    var headers = {"Content-Type": "application/json"};
    var token = field ? field.value.trim() : "";
    if (token) {
      headers.Authorization = "Bearer " + token;
      try { sessionStorage.setItem(KEY, token); } catch (e) {}
    }
    button.disabled = true;
    say("Replaying " + id + "...");
    fetch("replay", {method: "POST", headers: headers, credentials: "omit",
                      cache: "no-store", body: JSON.stringify({ids: [id]})})
      .then(function (r) {
        return r.json().then(function (body) {
          if (r.ok) {
            say("Queued " + body.queued + " delivery(ies) of " + id + ". Reload to follow.");
          } else {
            say("Refused (" + r.status + "): " + (body.error || ""));
          }
        });
      })
      .catch(function (e) { say("Failed: " + e); })
      .then(function () { button.disabled = false; });
  }
  document.querySelectorAll("button[data-replay]").forEach(function (b) {
    b.addEventListener("click", function () { replay(b); });
  });
})();
"""


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# Only this page's own style and script run; it loads nothing, posts only to its origin
# (fetch), submits no form, and no page may frame it.
CSP = (
    f"default-src 'none'; script-src {_hash(SCRIPT)}; style-src {_hash(CSS)};"
    " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def render_status_page(snap: StatusSnapshot, *, token_required: bool) -> str:
    """The whole page. `token_required`: replay asks for the admin token."""
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>orderwatch status</title>",
        f"<style>{CSS}</style></head><body>",
        _header(snap),
        _orders(snap),
        _rate(snap),
        _pauses(snap),
        _pending(snap),
        _finals(snap),
        _dead(snap, token_required),
        f"<script>{SCRIPT}</script></body></html>",
    ]
    return "\n".join(parts)


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _time(t: float | None, now: float) -> str:
    """`2024-05-01 12:00:03Z (5 min ago)`, escaped."""
    if t is None:
        return "-"
    stamp = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    delta = t - now
    text = _span(abs(delta))
    return _e(f"{stamp} ({'in ' + text if delta > 0.5 else text + ' ago'})")


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> str:
    """A table in a box that scrolls sideways on a narrow screen; cells already escaped.
    A header that starts with `#` is a number column (right-aligned)."""
    if not rows:
        return f'<p class="note">{_e(empty)}</p>'

    def cell(tag: str, h: str, value: str) -> str:
        attrs = ' class="num"' if h.startswith("#") else " hidden data-js" if h == "" else ""
        return f"<{tag}{attrs}>{value}</{tag}>"

    top = "".join(cell("th", h, _e(h.lstrip("#"))) for h in head)
    body = "".join(
        "<tr>" + "".join(cell("td", h, v) for h, v in zip(head, r, strict=True)) + "</tr>"
        for r in rows
    )
    table = f"<table><thead><tr>{top}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def _header(snap: StatusSnapshot) -> str:
    state = (
        '<p class="ok">Ready</p>'
        if snap.ready
        else f'<p class="bad">Not ready: {_e(snap.reason)}</p>'
    )
    problem = (
        f'<p class="bad">The state store did not answer ({_e(snap.store_problem)}): the'
        " lists below are empty until it does.</p>"
        if snap.store_problem
        else ""
    )
    return (
        f"<header><h1>orderwatch</h1><p>Version {_e(__version__)} &middot; store:"
        f" {_e(snap.store)} &middot; as of {_time(snap.now, snap.now)} &middot;"
        f' <a href="./">reload</a></p>{state}{problem}</header>'
    )


def _orders(snap: StatusSnapshot) -> str:
    rows = [[_e(state), _e(n)] for state, n in snap.orders.items()]
    deliveries = [[_e(state), _e(n)] for state, n in snap.deliveries.items()]
    return (
        '<section id="orders"><h2>Orders by state</h2>'
        + _table(["State", "#Orders"], rows, "No counts: the store did not answer.")
        + "<h2>Deliveries by state</h2>"
        + _table(["State", "#Deliveries"], deliveries, "No counts: the store did not answer.")
        + "</section>"
    )


def _rate(snap: StatusSnapshot) -> str:
    per_s = snap.requests / snap.window_s if snap.window_s > 0 else 0.0
    share = per_s / snap.rate_limit if snap.rate_limit > 0 else 0.0
    replicas = (
        " The limit is shared by every replica of this PostgreSQL store; this count is"
        " this process's own."
        if snap.shared_limit
        else ""
    )
    return (
        '<section id="rate"><h2>Request rate</h2>'
        f"<p>{_e(snap.requests)} requests to the Runa API in the last"
        f" {_e(f'{snap.window_s:.0f}')} s: {_e(f'{per_s:.2f}')}/s of the"
        f" {_e(f'{snap.rate_limit:g}')}/s limit ({_e(f'{share:.0%}')}).</p>"
        f'<meter min="0" max="1" value="{_e(f"{min(share, 1.0):.3f}")}">{_e(f"{share:.0%}")}'
        f'</meter><p class="note">{replicas}</p></section>'
    )


def _pauses(snap: StatusSnapshot) -> str:
    if not snap.pauses:
        body = '<p class="ok">None: polling runs.</p>'
    else:
        items = "".join(
            f"<li><strong>{_e(p.kind)}</strong>: {_e(p.reason)}; ends"
            f" {_time(p.until, snap.now) if p.until is not None else 'when a probe is answered'}"
            "</li>"
            for p in snap.pauses
        )
        body = f'<ul class="bad">{items}</ul>'
    return f'<section id="pauses"><h2>Pauses</h2>{body}</section>'


def _pending(snap: StatusSnapshot) -> str:
    rows = [
        [
            _e(o.order_id),
            _e(_span(max(0.0, snap.now - o.added_at))),
            _e(o.polls),
            _e(o.last_error or "-"),
        ]
        for o in snap.oldest_pending
    ]
    head = ["Order", "Age", "#Polls", "Last error"]
    return (
        '<section id="pending"><h2>Oldest pending orders</h2>'
        + _table(head, rows, "No order is pending.")
        + "</section>"
    )


def _finals(snap: StatusSnapshot) -> str:
    rows = [
        [_e(o.order_id), _e(o.final_status or o.state), _time(o.finished_at, snap.now)]
        for o in snap.recent_finals
    ]
    return (
        '<section id="finals"><h2>Recent finals</h2>'
        + _table(["Order", "Status", "Finished"], rows, "No order has ended yet.")
        + "</section>"
    )


def _dead(snap: StatusSnapshot, token_required: bool) -> str:
    replay = snap.can_replay and bool(snap.dead)
    rows = [
        [
            _e(d.order_id),
            _e(d.sink),
            _e(d.attempts),
            _e(d.last_outcome or "-"),
            _time(d.dead_at, snap.now),
            *([f'<button type="button" data-replay="{_e(d.order_id)}">Replay</button>'] * replay),
        ]
        for d in snap.dead
    ]
    head = ["Order", "Sink", "#Attempts", "Last outcome", "Dead since", *[""] * replay]
    return (
        '<section id="dead"><h2>Dead deliveries</h2>'
        + _table(head, rows, "None: every delivery arrived or is still being tried.")
        + (_replay_box(token_required) if replay else "")
        + "</section>"
    )


def _replay_box(token_required: bool) -> str:
    token = (
        '<p><label for="token">Admin token (kept in this tab only):</label><br>'
        '<input id="token" type="password" autocomplete="off" spellcheck="false"></p>'
        if token_required
        else ""
    )
    return (
        f'<div id="replay" hidden data-js><p class="note">Replay sends the order\'s final'
        " event again, with the same webhook-id, to every sink configured now.</p>"
        f'{token}<p id="replay-result" role="status"></p></div>'
        '<p class="note" data-nojs>Replay needs JavaScript; or run'
        " <code>orderwatch replay ORDER_ID</code>.</p>"
    )
