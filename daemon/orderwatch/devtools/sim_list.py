"""The simulator's list endpoint, `GET /v2/order`, with the shapes of Runa's OpenAPI
description: `limit` (1-500, default 100), the mutually exclusive cursors `after` and `before`,
basic details for final orders and `{id, status, message}` for PROCESSING ones, and
`pagination.{cursors, page}`. A cursor is an order ID on the page's edge; a bad one, both at
once, or a limit out of range is a 400 `pagination_error`.

The description does not say in which order orders come: this one lists newest first (as
most APIs do), by when the simulator first knew each order. It may hold an account history:
older final orders no one tracks (`SimOptions.history`), created HISTORY_SPACING_S apart
before the simulator started.

Faults for the list alone (`ListFaults`, or `Simulator.script_list`): pagination_error, 5xx,
a malformed page, 403 (a key that may read orders but not list them); the simulator's general
faults (429, 5xx, timeouts, resets, a bad key) apply to list requests too."""

from __future__ import annotations

import json
import random
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from orderwatch.devtools.sim_bodies import basic_details, error, pick_fault

if TYPE_CHECKING:
    from orderwatch.devtools.simulator import Simulator

LIST_FAULT_NAMES = ("pagination_error", "500", "malformed", "403", "429", "empty", "ok")
DEFAULT_LIMIT = 100
MAX_LIMIT = 500
HISTORY_SPACING_S = 30.0  # between two history orders: 20,000 of them span a week
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@dataclass
class ListFaults:
    rate_pagination_error: float = 0.0
    rate_5xx: float = 0.0
    rate_malformed: float = 0.0
    forbidden: bool = False  # 403 for every list request; GET /order/{id} still answers


def ulid_id(created_wall: float, rng: random.Random) -> str:
    """An order ID as Runa makes them: `O-` and a ULID (48-bit ms time, 80 random bits)."""
    n = (int(created_wall * 1000) << 80) | rng.getrandbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[n & 31])
        n >>= 5
    return "O-" + "".join(reversed(chars))


class OrderList:
    """Every order the simulator knows, in the order it first knew them (its dict's order):
    positions for cursors, kept up to date as orders are added (never removed)."""

    def __init__(self, orders: dict[str, Any]) -> None:
        self._orders = orders
        self._ids: list[str] = []
        self._pos: dict[str, int] = {}

    def _catch_up(self) -> None:
        if len(self._ids) == len(self._orders):
            return
        for oid in list(self._orders)[len(self._ids) :]:
            self._pos[oid] = len(self._ids)
            self._ids.append(oid)

    def page(self, limit: int, after: str | None, before: str | None) -> list[str] | None:
        """The IDs of one page, newest first; None for a cursor that names no order."""
        self._catch_up()
        newest = len(self._ids) - 1  # wire index w is list position newest - w
        if after is not None:
            if (pos := self._pos.get(after)) is None:
                return None
            start = newest - pos + 1
        elif before is not None:
            if (pos := self._pos.get(before)) is None:
                return None
            start = max(0, newest - pos - limit)
            limit = min(limit, newest - pos)
        else:
            start = 0
        return [self._ids[newest - w] for w in range(start, min(start + limit, newest + 1))]


class ListEndpoint:
    """`GET /v2/order` for one Simulator: faults, arrivals and pages."""

    def __init__(self, sim: Simulator, rng: random.Random) -> None:
        self.sim = sim
        self.faults = ListFaults()
        self.orders = OrderList(sim.orders)
        self._rng = rng
        self._script: deque[str] = deque()
        self.list_status: dict[str, str] = {}  # the list says this status, whatever GET says
        self.requests: deque[tuple[float, str]] = deque(maxlen=100_000)  # (arrival, query)
        self.received = 0
        # A final order's item as JSON, and whether its full body existed then: a page is
        # then mostly a join, and requests arriving meanwhile are not stamped late.
        self._final: dict[str, tuple[bool, str]] = {}

    def script(self, *responses: str) -> None:
        """The next list requests answer like this, in order ("ok" answers normally)."""
        unknown = [r for r in responses if r not in LIST_FAULT_NAMES]
        if unknown:
            raise ValueError(f"unknown scripted list responses {unknown}; use {LIST_FAULT_NAMES}")
        self._script.extend(responses)

    def _pick(self) -> str:
        if self._script:
            return self._script.popleft()
        if self.faults.forbidden:
            return "403"
        f = self.faults
        return pick_fault(
            self._rng.random(),
            (
                ("pagination_error", f.rate_pagination_error),
                ("500", f.rate_5xx),
                ("malformed", f.rate_malformed),
            ),
        )

    async def handle(self, request: web.Request, arrived: float) -> web.StreamResponse:
        self.received += 1
        self.requests.append((arrived, request.query_string))
        fault = self._pick()
        if fault == "ok":  # the general faults (429, 5xx, bad key, version, resets) apply too
            general = await self.sim.refusal(request)
            if general is not None:
                return general
        if fault == "403":
            return error(403, "forbidden", "This API key may not list orders")
        if fault == "429":
            return web.json_response({"error": "rate exceeded"}, status=429)
        if fault == "500":
            return error(500, "internal_server_error", "Something went wrong")
        if fault == "pagination_error":
            return error(400, "pagination_error", "Invalid pagination parameters")
        if fault == "malformed":
            if self._rng.random() < 0.5:
                return web.Response(text="<html>bad gateway</html>", content_type="text/html")
            return web.json_response({"items": [{"status": "COMPLETED"}], "pagination": {}})
        if fault == "empty":
            return web.json_response({"items": [], "pagination": _pagination([], 100)})
        return self._page(request)

    def _page(self, request: web.Request) -> web.Response:
        q = request.query
        raw_limit = q.get("limit", str(DEFAULT_LIMIT))
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
            return error(400, "pagination_error", f"limit must be 1 to {MAX_LIMIT}")
        after, before = q.get("after"), q.get("before")
        if after is not None and before is not None:
            return error(400, "pagination_error", "before and after are mutually exclusive")
        limit = int(raw_limit)
        ids = self.orders.page(limit, after, before)
        if ids is None:
            return error(400, "pagination_error", "Invalid cursor")
        items = ", ".join(item for oid in ids if (item := self._item_json(oid)) is not None)
        pagination = json.dumps(_pagination(ids, limit))
        body = f'{{"items": [{items}], "pagination": {pagination}}}'
        return web.Response(text=body, content_type="application/json")

    def _item_json(self, order_id: str) -> str | None:
        has_body = self.sim.payload(order_id) is not None
        hit = self._final.get(order_id)
        if hit is not None and hit[0] == has_body and order_id not in self.list_status:
            return hit[1]
        item = self._item(order_id)
        if item is None:
            return None
        text = json.dumps(item)
        if item["status"] != "PROCESSING" and order_id not in self.list_status:
            self._final[order_id] = (has_body, text)
        return text

    def _item(self, order_id: str) -> dict[str, Any] | None:
        sim = self.sim
        status = self.list_status.get(order_id) or sim.status_of(order_id)
        if status is None:  # not found (yet): not listed either
            return None
        if status == "PROCESSING":
            return {"id": order_id, "status": status, "message": "Order is being processed"}
        created = datetime.fromtimestamp(sim.created_wall(order_id), UTC).replace(microsecond=0)
        return basic_details(order_id, status, created, sim.payload(order_id))


def _pagination(ids: list[str], limit: int) -> dict[str, Any]:
    cursors = {"before": ids[0], "after": ids[-1]} if ids else {}
    return {"cursors": cursors, "page": {"limit": limit}}
