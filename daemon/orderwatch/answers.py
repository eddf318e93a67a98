"""What the API said: every HTTP exchange classified into one of a few kinds. Pure functions."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import Any, NamedTuple


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


class Answer(NamedTuple):
    """One classified response. `detail` is short and safe to log (never the body). A
    NamedTuple: one is made per poll (see `store.base.Claim`)."""

    kind: Kind
    http_status: int | None = None
    order_status: str | None = None  # COMPLETED / FAILED for FINAL
    body: bytes | None = None  # raw body when it was valid JSON (kept for files and events)
    data: Any = None  # the parsed body for FINAL
    retry_after_s: float | None = None
    detail: str = ""


FINAL_STATUSES = frozenset({"COMPLETED", "FAILED"})
# Error types that refuse every request alike, not one order (API-NOTES).
REFUSALS = frozenset({"version_removed", "invalid_version", "insecure_protocol"})
_TEXT = (str,)


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP-date; None when absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²" and "٣" are digits to isdigit, not to float
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_wall)


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


def _finite(text: str) -> float:
    """1e400 would be inf, and the event built from it would say Infinity: not JSON."""
    if not math.isfinite(value := float(text)):
        raise ValueError("number out of range")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are all different: with a key twice, readers disagree on what it
    says (the last value wins here, the first elsewhere), so neither reading is trusted."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in an object")
    return obj


# One decoder's C scanner, built once and called directly: json.loads with these hooks builds
# a decoder per call (3.7 µs a body), and JSONDecoder.decode wraps the scanner in two Python
# calls and two regex matches (1.1 µs against 0.6).
_DECODER = json.JSONDecoder(
    parse_float=_finite, parse_constant=_no_constant, object_pairs_hook=_unique_keys
)
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined] # set by JSONDecoder.__init__, not in typeshed
_WS = " \t\n\r"  # JSON's whitespace, all of it
NOT_JSON = (ValueError, UnicodeDecodeError, RecursionError)  # what strict_json raises
# Arrays and objects inside one another, the body itself the first level. Runa's orders nest
# a handful deep; without a bound, a body the parser took (it stops near the recursion limit)
# could be too deep for json.dumps a few frames further down, in the event built from it.
MAX_DEPTH = 64


def strict_json(body: bytes) -> Any:
    """A UTF-8 JSON body as RFC 8259 has it: no NaN or Infinity, no number beyond a float,
    nested at most MAX_DEPTH levels, so whatever is built from it serializes as JSON again;
    no key twice in one object. Raises one of NOT_JSON."""
    text = body.decode("utf-8")
    start = len(text) - len(text.lstrip(_WS))
    try:
        data, end = _SCAN(text, start)
    except StopIteration:  # the scanner's word for "no JSON value here"
        raise ValueError("not a JSON value") from None
    if end != len(text) and text[end:].strip(_WS):
        raise ValueError("extra data after the JSON value")
    # Each level takes two characters and one bracket: most bodies are below either count.
    if (
        len(text) > 2 * MAX_DEPTH
        and text.count("[") + text.count("{") > MAX_DEPTH
        and _deeper_than(data, MAX_DEPTH)
    ):
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    return data


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels in `value` (level by level,
    without recursion)."""
    level = [value] if isinstance(value, dict | list) else []
    for _ in range(limit):
        if not level:
            return False
        level = [
            v
            for c in level
            for v in (c.values() if isinstance(c, dict) else c)
            if isinstance(v, dict | list)
        ]
    return bool(level)


def _error_type(body: bytes) -> object:
    """The `type` of a Runa error body, or None."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data.get("type") if isinstance(data, dict) else None
