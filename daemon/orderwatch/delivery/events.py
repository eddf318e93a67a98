"""Final events: their stable ids and the exact bytes every sink receives."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from orderwatch.core.strict_json import NOT_JSON, strict_json
from orderwatch.store.base import EventRecord

EVENT_TYPES = {
    "COMPLETED": "order.completed",
    "FAILED": "order.failed",
    "EXPIRED": "order.expired",
    "NOT_FOUND": "order.not_found",
}


def event_id(order_id: str, event_type: str) -> str:
    """Stable across retries, restarts, replays and replicas: derived from order and event only."""
    return f"evt_{event_type.removeprefix('order.')}_{order_id}"


def make_event(order_id: str, final_status: str, data: Any, now: float) -> EventRecord:
    """Build the event once; its body is stored and sent verbatim on every attempt and replay."""
    event_type = EVENT_TYPES[final_status]
    stamp = datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")
    body = _dumps({"type": event_type, "timestamp": stamp, "data": data})
    return EventRecord(
        event_id=event_id(order_id, event_type),
        order_id=order_id,
        event_type=event_type,
        body=body,
        created_at=now,
    )


def committed_payload(event: EventRecord | None) -> bytes | None:
    """The final payload an order.completed / order.failed event carries (JSON-equal to the
    API's body); None for no event or one without a payload."""
    if event is None or event.event_type not in (EVENT_TYPES["COMPLETED"], EVENT_TYPES["FAILED"]):
        return None
    return _dumps(json.loads(event.body)["data"])


def _dumps(value: Any) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate ("\ud83c" in the API's JSON) has no UTF-8
        return json.dumps(value, separators=(",", ":")).encode()


def terminal_data(order_id: str, status: str, last_body: bytes | None) -> dict[str, Any]:
    """`data` for expired / not_found events: no payload, the last API body if it was JSON."""
    last: Any = None
    if last_body:
        try:
            last = strict_json(last_body)  # json.loads would let NaN through into the event
        except NOT_JSON:
            last = None
    return {"id": order_id, "status": status, "last_response": last}
