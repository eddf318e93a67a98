"""The bodies the simulator answers with, in the shapes of Runa's OpenAPI description: an
error, a final order's full details (`GET /order/{id}`) and its basic details (the list)."""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web


def pick_fault(r: float, rates: Iterable[tuple[str, float]]) -> str:
    """The fault whose share of [0, 1) the draw `r` falls in, or "ok" past them all."""
    for name, rate in rates:
        if r < rate:
            return name
        r -= rate
    return "ok"


def error(status: int, type_: str, message: str) -> web.Response:
    body = {"type": type_, "message": message, "help": "see https://developer.runa.io"}
    return web.json_response(body, status=status)


def iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def final_payload(order_id: str, status: str) -> dict[str, Any]:
    """A CompletedOrderWithFullDetails body; unique payout links per item."""
    rnd = random.Random(order_id)
    now = datetime.now(UTC).replace(microsecond=0)
    n_items = 0 if status == "FAILED" else rnd.randint(1, 3)
    value = f"{rnd.randint(5, 100)}.00"
    items = [
        {
            "id": f"E-{secrets.token_hex(5).upper()}",
            "distribution_method": {"type": "PAYOUT_LINK"},
            "products": {"type": "SINGLE", "value": "AMZ-US"},
            "face_value": value,
            "price": value,
            "currency": "USD",
            "payout": {
                "status": "ACTIVE",
                "status_updated_at": iso(now),
                "url": f"https://spend.runa.io/{secrets.token_urlsafe(18)}",
                "expiry_date": iso(now + timedelta(days=365)),
            },
        }
        for _ in range(n_items)
    ]
    total = f"{float(value) * n_items:.2f}"
    return {
        "id": order_id,
        "status": status,
        "created_at": iso(now - timedelta(seconds=5)),
        "completed_at": iso(now),
        "description": "orderwatch simulator order",
        "payment_method": {"type": "ACCOUNT_BALANCE", "currency": "USD"},
        "currency": "USD",
        "total_price": total,
        "total_discount": "0.00",
        "items": items,
        "transaction_detail": {"USD": {"value": total}},  # no FX: the schema has no null
        "metadata": {"source": "simulator"},
    }


BASIC_KEYS = (
    *("id", "status", "created_at", "completed_at", "description", "payment_method"),
    *("currency", "total_price", "total_discount"),
)


def basic_details(
    order_id: str, status: str, created: datetime, payload: dict[str, Any] | None
) -> dict[str, Any]:
    """A CompletedOrderWithBasicDetails: from the full body when there is one, so that the
    list and `GET /order/{id}` agree."""
    if payload is not None:
        return {k: payload[k] for k in BASIC_KEYS if k in payload}
    price = "0.00" if status == "FAILED" else f"{5 + sum(map(ord, order_id)) % 96}.00"
    return {
        "id": order_id,
        "status": status,
        "created_at": iso(created),
        "completed_at": iso(created + timedelta(seconds=2)),
        "description": "orderwatch simulator order",
        "payment_method": {"type": "ACCOUNT_BALANCE", "currency": "USD"},
        "currency": "USD",
        "total_price": price,
        "total_discount": "0.00",
    }
