"""The bundled Runa API simulator: `GET /v2/order/{id}`, `GET /v2/order` (the list, in
sim_list) and `GET /v2/ping` with the shapes of Runa's OpenAPI description, orders that
complete or fail after a chosen delay, an account history of older orders, and injectable
faults (latency, 429, 5xx, timeouts, malformed bodies, connection resets, bad keys).

Control endpoints for tests and benchmarks live under `/_sim/` (stats, orders, faults,
list_faults, complete). It records every API request's arrival time, which is where the
rate limit is judged."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from aiohttp import web

from orderwatch.core.pulse import Pulse
from orderwatch.devtools.pusher import (
    Pusher,
    PushOptions,
)
from orderwatch.devtools.sim_bodies import error as _error
from orderwatch.devtools.sim_bodies import final_payload as _final_payload
from orderwatch.devtools.sim_bodies import pick_fault
from orderwatch.devtools.sim_list import HISTORY_SPACING_S, ListEndpoint, ListFaults, ulid_id

API_VERSION = "2024-02-05"  # the one live version (API-NOTES)
FAULT_NAMES = ("reset", "timeout", "429", "500", "504", "malformed", "401", "404", "ok")


@dataclass
class Faults:
    latency: float = 0.0
    rate_429: float = 0.0
    retry_after: str | None = None
    rate_5xx: float = 0.0
    rate_timeout: float = 0.0
    rate_malformed: float = 0.0
    rate_reset: float = 0.0
    bad_key: bool = False
    version_removed: bool = False  # every order request: 410 version_removed (a retired version)
    hang_s: float = 30.0  # how long a "timeout" answer hangs (the client gives up first)


@dataclass
class SimOptions:
    api_key: str | None = None
    complete_after: float = 3.0
    fail_ratio: float = 0.0
    not_found_prefix: str = "O-404"
    not_found_for: float = 0.0
    faults: Faults = field(default_factory=Faults)
    seed: int | None = None
    push: PushOptions | None = None  # Runa's own push as orders complete (devtools/pusher.py)
    history: int = 0  # older final orders in the account, listed but never tracked


@dataclass
class _Order:
    first_seen: float
    complete_after: float
    status: str | None = None  # forced final status
    payload: dict[str, Any] | None = None


def max_in_window(times: Iterable[float], window_s: float = 1.0) -> int:
    """The most timestamps inside any half-open window [t, t + window_s): the server's view
    of a rate limit."""
    ordered = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(ordered):
        while ordered[j] <= t - window_s:
            j += 1
        best = max(best, i - j + 1)
    return best


class Simulator:
    def __init__(self, options: SimOptions, clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options
        self.faults = options.faults
        self._clock = clock
        self._rng = random.Random(options.seed)
        self._orders: dict[str, _Order] = {}
        self._wall0 = time.time() - clock()  # the wall time of clock() == 0: created_at
        self.list = ListEndpoint(self, self._rng)
        self._script: deque[str] = deque()
        self.arrivals: deque[float] = deque(maxlen=1_000_000)
        self.requests: deque[tuple[float, str]] = deque(maxlen=1_000_000)  # (arrival, order id)
        self.rate_limited_at: deque[float] = deque(maxlen=100_000)  # arrivals answered 429
        self.received = 0  # every order request, past the logs' caps (benchmarks count these)
        self.answered: Counter[str] = Counter()
        self.pusher = Pusher(options.push, random.Random(options.seed)) if options.push else None
        self.changed = Pulse()  # a request arrived, or was answered (tests wait on it)
        for i in range(options.history, 0, -1):  # the account's older orders, oldest first
            t = clock() - i * HISTORY_SPACING_S
            self._orders[ulid_id(self._wall0 + t, self._rng)] = _Order(t, 0.0)
        self.app = web.Application()
        self.app.router.add_get("/v2/order/{id}", self._order)
        self.app.router.add_get("/v2/order", self._list)
        self.app.router.add_get("/v2/ping", self._ping)
        self.app.router.add_get("/_sim/stats", self._stats)
        self.app.router.add_post("/_sim/orders", self._create)
        self.app.router.add_post("/_sim/faults", self._set_faults)
        self.app.router.add_post("/_sim/list_faults", self._set_list_faults)
        self.app.router.add_post("/_sim/complete", self._complete)

    # -- Python API --------------------------------------------------------------------
    def set_faults(self, faults: Faults) -> None:
        self.faults = faults

    def script(self, *responses: str) -> None:
        """The next requests answer like this, in order ("ok" answers normally)."""
        unknown = [r for r in responses if r not in FAULT_NAMES]
        if unknown:
            raise ValueError(f"unknown scripted responses {unknown}; use {FAULT_NAMES}")
        self._script.extend(responses)

    def create(
        self, ids: list[str], complete_after: float | None = None, status: str | None = None
    ) -> None:
        after = self.options.complete_after if complete_after is None else complete_after
        for oid in ids:
            self._orders[oid] = _Order(self._clock(), after, status)
            self._will_finish(oid)

    def complete(self, ids: list[str], status: str = "COMPLETED") -> None:
        for oid in ids:
            order = self._orders.setdefault(oid, _Order(self._clock(), 0.0))
            order.complete_after, order.status = 0.0, status
            order.first_seen = min(order.first_seen, self._clock())
            self._will_finish(oid)

    def payload(self, order_id: str) -> dict[str, Any] | None:
        order = self._orders.get(order_id)
        return order.payload if order else None

    def max_in_window(self, window_s: float = 1.0) -> int:
        return max_in_window(self.arrivals, window_s)

    def script_list(self, *responses: str) -> None:
        """The next list requests answer like this, in order (see sim_list)."""
        self.list.script(*responses)

    def set_list_faults(self, faults: ListFaults) -> None:
        self.list.faults = faults

    @property
    def orders(self) -> dict[str, Any]:
        """Every order known, in the order they became known (the list's order)."""
        return self._orders

    def created_wall(self, order_id: str) -> float:
        return self._wall0 + self._orders[order_id].first_seen

    def status_of(self, order_id: str) -> str | None:
        """What GET would say of an order now, without answering: None when not found."""
        order = self._orders.get(order_id)
        if order is None or order_id.startswith(self.options.not_found_prefix):
            return None
        age = self._clock() - order.first_seen
        if age < self.options.not_found_for:
            return None
        if age < order.complete_after + self.options.not_found_for:
            return "PROCESSING"
        if order.payload is not None:
            return str(order.payload["status"])
        return order.status or self._outcome(order_id)

    # -- handlers ----------------------------------------------------------------------
    def _pick_fault(self) -> str:
        if self._script:
            return self._script.popleft()
        f = self.faults
        return pick_fault(
            self._rng.random(),
            (
                ("reset", f.rate_reset),
                ("timeout", f.rate_timeout),
                ("429", f.rate_429),
                ("500", f.rate_5xx),
                ("malformed", f.rate_malformed),
            ),
        )

    async def _order(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        self.arrivals.append(now)
        self.received += 1
        self.requests.append((now, request.match_info["id"]))
        self.changed()
        response = await self._answer(request)
        self.answered[str(response.status)] += 1
        if response.status == 429:
            self.rate_limited_at.append(now)
        self.changed()
        return response

    async def _list(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        self.arrivals.append(now)  # the list counts against the same rate
        response = await self.list.handle(request, now)
        if response.status == 429:
            self.rate_limited_at.append(now)
        return response

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        fault = self._pick_fault()
        refusal = await self._general(request, fault)
        if refusal is not None:
            return refusal
        return self._order_body(request.match_info["id"], fault == "404")

    async def refusal(self, request: web.Request) -> web.StreamResponse | None:
        """The general faults, for a request that is not an order's (the list)."""
        return await self._general(request, self._pick_fault())

    async def _general(self, request: web.Request, fault: str) -> web.StreamResponse | None:
        """The answer `fault`, the key or the API version force; None: answer normally."""
        if fault == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=599)
        if fault == "timeout":
            await asyncio.sleep(self.faults.hang_s)
        if self.faults.latency:
            await asyncio.sleep(self.faults.latency)
        key_ok = (
            self.options.api_key is None or request.headers.get("X-Api-Key") == self.options.api_key
        )
        if fault == "401" or self.faults.bad_key or not key_ok:
            return _error(401, "unauthorized", "Invalid API key")
        if self.faults.version_removed:
            return _error(410, "version_removed", "This API version has been removed")
        if request.headers.get("X-Api-Version", API_VERSION) != API_VERSION:
            return _error(400, "invalid_version", "Unknown API version")
        if fault == "429":
            headers = {"Retry-After": self.faults.retry_after} if self.faults.retry_after else None
            return web.json_response({"error": "rate exceeded"}, status=429, headers=headers)
        if fault in ("500", "504"):
            return _error(
                int(fault),
                "internal_server_error" if fault == "500" else "timeout",
                "Something went wrong",
            )
        if fault == "malformed":
            if self._rng.random() < 0.5:
                return web.Response(text="<html>bad gateway</html>", content_type="text/html")
            return web.json_response({"id": "O-SOMEONE-ELSE", "status": "COMPLETED"})
        return None

    def _order_body(self, order_id: str, force_404: bool) -> web.Response:
        now = self._clock()
        if force_404 or order_id.startswith(self.options.not_found_prefix):
            return _error(404, "not_found", "Order not found")
        order = self._orders.get(order_id)
        if order is None:
            order = self._orders[order_id] = _Order(now, self.options.complete_after)
            self._will_finish(order_id)
        age = now - order.first_seen
        if age < self.options.not_found_for:
            return _error(404, "not_found", "Order not found")
        if age < order.complete_after + self.options.not_found_for:
            return web.json_response(
                {"id": order_id, "status": "PROCESSING", "message": "Order is being processed"}
            )
        if order.payload is None:
            order.payload = _final_payload(order_id, order.status or self._outcome(order_id))
        return web.json_response(order.payload)

    def _will_finish(self, order_id: str) -> None:
        """Tell the pusher when this order will be final (it pushes then)."""
        order = self._orders[order_id]
        if self.pusher is not None:
            at = order.first_seen + order.complete_after + self.options.not_found_for
            status = order.status or self._outcome(order_id)
            self.pusher.order_final(order_id, status, at - self._clock())

    def _outcome(self, order_id: str) -> str:
        h = int.from_bytes(hashlib.sha256(order_id.encode()).digest()[:8], "big") / 2**64
        return "FAILED" if h < self.options.fail_ratio else "COMPLETED"

    async def _ping(self, request: web.Request) -> web.Response:
        key_ok = (
            self.options.api_key is None or request.headers.get("X-Api-Key") == self.options.api_key
        )
        if self.faults.bad_key or not key_ok:
            return _error(401, "unauthorized", "Invalid API key")
        return web.json_response({"message": "pong"})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "count": self.received,
                "list_count": self.list.received,
                "max_in_window": self.max_in_window(1.0),
                "answered": dict(self.answered),
                "orders": len(self._orders),
            }
        )

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        ids, each = list(body.get("ids", ())), body.get("complete_after_each", {})
        self.create(ids, body.get("complete_after"), body.get("status"))
        for oid, after in each.items():  # many delays in one call
            self.create([oid], after, body.get("status"))
        return web.json_response({"created": len(ids) + len(each)})

    async def _set_faults(self, request: web.Request) -> web.Response:
        body = await request.json()
        known = {f.name for f in fields(Faults)}
        self.set_faults(Faults(**{k: v for k, v in body.items() if k in known}))
        return web.json_response(asdict(self.faults))

    async def _set_list_faults(self, request: web.Request) -> web.Response:
        body = await request.json()
        known = {f.name for f in fields(ListFaults)}
        self.set_list_faults(ListFaults(**{k: v for k, v in body.items() if k in known}))
        return web.json_response(asdict(self.list.faults))

    async def _complete(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.complete(list(body["ids"]), body.get("status", "COMPLETED"))
        return web.json_response({"completed": len(body["ids"])})


@dataclass
class RunningSim:
    sim: Simulator
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2"


@asynccontextmanager
async def running_simulator(
    options: SimOptions,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[RunningSim]:
    sim = Simulator(options, clock)
    runner = web.AppRunner(
        sim.app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    try:
        yield RunningSim(sim, bound)
    finally:
        if sim.pusher is not None:
            await sim.pusher.close()
        await runner.cleanup()


async def serve_forever(options: SimOptions, host: str, port: int) -> None:
    async with running_simulator(options, host, port):
        # The simulator is a measuring instrument: a full GC pass over its request log would
        # stall it, and requests queued meanwhile would be stamped as one burst.
        gc.freeze()
        gc.set_threshold(50_000, 50, 1000)
        await asyncio.Event().wait()
