"""What the API said: every HTTP exchange classified into one of a few kinds. Pure functions."""

from __future__ import annotations

import json
from enum import Enum
from typing import Any, NamedTuple

from orderwatch.core.ids import is_valid_order_id
from orderwatch.core.retry_after import parse_retry_after
from orderwatch.core.strict_json import NOT_JSON, strict_json


class Kind(Enum):
    # Members are singletons compared by identity: hash them so too, in C. Enum's own
    # __hash__ is Python code, and every poll counts its answer in a dict keyed by Kind.
    __hash__ = object.__hash__

    PROCESSING = "processing"
    FINAL = "final"
    NOT_FOUND = "not_found"
    AUTH = "auth"
    REFUSED = "refused"  # every request refused for the config's sake (API version, HTTP)
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    TRANSPORT = "transport"
    INVALID = "invalid"
    LISTED = "listed"  # a valid page of the list endpoint (`data` is a Page)


class Answer(NamedTuple):
    """One classified response. `detail` is short and safe to log (never the body). A
    NamedTuple: one is made per poll (see `store.base.Claim`)."""

    kind: Kind
    http_status: int | None = None
    order_status: str | None = None  # COMPLETED / FAILED for FINAL
    body: bytes | None = None  # raw body when it was valid JSON (kept for files and events)
    data: Any = None  # the parsed body for FINAL; the Page for LISTED
    retry_after_s: float | None = None
    detail: str = ""


FINAL_STATUSES = frozenset({"COMPLETED", "FAILED"})
# Error types that refuse every request alike, not one order (API-NOTES).
REFUSALS = frozenset({"version_removed", "invalid_version", "insecure_protocol"})
_TEXT = (str,)


def _order_problem(data: Any, order_id: str) -> str | None:
    """Why `data` is not an order of the documented shape (None when it is one)."""
    if not isinstance(data, dict):
        return "body is not a JSON object"
    if data.get("id") != order_id:
        return "body is for another order id"
    status = data.get("status")
    if status == "PROCESSING":
        return None
    if status not in FINAL_STATUSES:
        return "unknown order status"
    items = data.get("items", [])
    if items is None:
        items = []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return "items is not a list of objects"
    for item in items:
        payout = item.get("payout")
        if payout is not None and not isinstance(payout, dict):
            return "item payout is not an object"
    for key in ("created_at", "completed_at", "currency", "total_price"):
        if key in data and data[key] is not None and not isinstance(data[key], _TEXT):
            return f"{key} is not a string"
    return None


def classify(
    http_status: int, body: bytes, order_id: str, retry_after: str | None, now_wall: float
) -> Answer:
    """Turn one HTTP response into an Answer."""
    if http_status != 200 and (refused := _refusal(http_status, body, retry_after, now_wall)):
        return refused
    if http_status == 404:
        if _error_type(body) == "not_found":  # Runa's word: no such order
            return Answer(Kind.NOT_FOUND, 404, body=body, detail="http 404")
        return Answer(
            Kind.INVALID, 404, detail="http 404 without type not_found (is runa.base_url right?)"
        )
    if http_status >= 500:
        return Answer(Kind.SERVER_ERROR, http_status, detail=f"http {http_status}")
    if http_status != 200:
        return Answer(Kind.INVALID, http_status, detail=f"unexpected http {http_status}")
    try:
        data = strict_json(body)
    except NOT_JSON:
        return Answer(Kind.INVALID, 200, detail="body is not JSON")
    problem = _order_problem(data, order_id)
    if problem is not None:
        return Answer(Kind.INVALID, 200, detail=problem)
    if data["status"] == "PROCESSING":
        return Answer(Kind.PROCESSING, 200, "PROCESSING", body=body, detail="processing")
    return Answer(Kind.FINAL, 200, data["status"], body=body, data=data, detail=data["status"])


def _refusal(
    http_status: int, body: bytes, retry_after: str | None, now_wall: float
) -> Answer | None:
    """What any endpoint may answer alike: slow down, the key, or the config (None: none)."""
    if http_status == 429:
        return Answer(
            Kind.RATE_LIMITED,
            http_status,
            retry_after_s=parse_retry_after(retry_after, now_wall),
            detail="http 429",
        )
    if http_status in (401, 403):
        return Answer(Kind.AUTH, http_status, detail=f"http {http_status}")
    if http_status in (400, 410) and (kind := _error_type(body)) in REFUSALS:
        return Answer(Kind.REFUSED, http_status, detail=f"http {http_status} {kind}")
    return None


class Listed(NamedTuple):
    """One order as a page of the list endpoint shows it."""

    order_id: str
    status: str  # PROCESSING / COMPLETED / FAILED
    created_at: str | None  # ISO 8601, given for final orders


class Page(NamedTuple):
    """A valid page of the list endpoint: its orders (those with a valid order ID; no other
    can be tracked) and its cursors."""

    orders: tuple[Listed, ...]
    size: int  # items on the page, valid IDs or not
    after: str | None
    before: str | None


def classify_list(
    http_status: int, body: bytes, retry_after: str | None, now_wall: float
) -> Answer:
    """Turn one answer of `GET /order` (the list) into an Answer: LISTED with a Page, or why
    not (the same kinds as an order's, a 400 pagination_error being INVALID)."""
    if http_status != 200 and (refused := _refusal(http_status, body, retry_after, now_wall)):
        return refused
    if http_status >= 500:
        return Answer(Kind.SERVER_ERROR, http_status, detail=f"http {http_status}")
    if http_status == 400 and (kind := _error_type(body)) is not None:
        return Answer(Kind.INVALID, 400, detail=f"http 400 {str(kind)[:40]}")
    if http_status != 200:
        return Answer(Kind.INVALID, http_status, detail=f"unexpected http {http_status}")
    try:
        data = strict_json(body)
    except NOT_JSON:
        return Answer(Kind.INVALID, 200, detail="page is not JSON (or names a key twice)")
    page = _page(data)
    if isinstance(page, str):
        return Answer(Kind.INVALID, 200, detail=page)
    return Answer(Kind.LISTED, 200, data=page, detail=f"{page.size} orders")


def _page(data: Any) -> Page | str:
    """The Page in a list body, or why it is not one of the documented shape."""
    if not isinstance(data, dict) or not isinstance(items := data.get("items"), list):
        return "page has no items list"
    pagination = data.get("pagination")
    cursors = pagination.get("cursors") if isinstance(pagination, dict) else None
    if cursors is None:
        cursors = {}
    if not isinstance(pagination, dict) or not isinstance(cursors, dict):
        return "page has no pagination object"
    after, before = cursors.get("after"), cursors.get("before")
    if not all(c is None or (isinstance(c, str) and c) for c in (after, before)):
        return "a cursor is not a string"
    orders: list[Listed] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, dict) or not isinstance(oid := item.get("id"), str):
            return "an item is not an order with an id"
        if (status := item.get("status")) != "PROCESSING" and status not in FINAL_STATUSES:
            return "unknown order status"
        created = item.get("created_at")
        if created is not None and not isinstance(created, str):
            return "created_at is not a string"
        if oid in seen:
            return "an order id is on the page twice"
        seen.add(oid)
        if is_valid_order_id(oid):
            orders.append(Listed(oid, status, created))
    return Page(tuple(orders), len(items), after, before)


def _error_type(body: bytes) -> object:
    """The `type` of a Runa error body, or None."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data.get("type") if isinstance(data, dict) else None
