"""The admin HTTP server: health, readiness, metrics, a small orders API, and a status page
(`GET /`, ops/status_page.py) with a replay action (`POST /replay`).

Loopback by default. The writing endpoints (`POST /orders`, `POST /replay`) need
`Authorization: Bearer <token>` when `admin.token` (or `admin.token_file`) is set; the config
refuses a non-loopback `listen` without a token. Off loopback every route needs the token but
the probes and the scrape (`/healthz`, `/readyz`, `/metrics`), which say nothing about any
order. Nothing here ever returns a payload: those hold payout links.

Clients other than Prometheus and an operator must not cost the daemon anything: connections
are bounded in number, and per peer address, so one peer cannot hold every slot and starve
the liveness probes; idle ones are dropped (they share the daemon's file descriptors with its
payload writes), a stop does not wait long for any of them, and on loopback a web page on
this host can neither add orders (a POST must be JSON: a browser sends that only after a
CORS preflight, which is never approved) nor read through DNS rebinding (the Host must be a
loopback name).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from aiohttp import web

from orderwatch.config.models import AdminSettings, is_loopback, split_listen
from orderwatch.core.errors import OrderwatchError, StoreError
from orderwatch.core.ids import is_valid_order_id
from orderwatch.core.redact import REDACTOR
from orderwatch.ops.status_page import HEADERS as PAGE_HEADERS
from orderwatch.ops.status_page import StatusSnapshot, render_status_page
from orderwatch.ops.status_service import ReplayResult

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler


log = structlog.get_logger("orderwatch.admin")
MAX_BODY = 1024 * 1024
MAX_IDS = 10_000
MAX_REPLAY_IDS = 100
MAX_CONNECTIONS = 64  # open at once; past it a new connection is closed at once
MAX_PER_PEER = 16  # open at once from one address: the rest stay for probes and scrapes
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # no token needed, anywhere
KEEPALIVE_S = 5.0  # an idle connection (or one that has sent half a request) is closed then
SHUTDOWN_S = 1.0  # what a stop waits for admin requests in progress (aiohttp's default: 60)
DAEMON_KEY = web.AppKey("daemon", object)


class AdminTarget(Protocol):
    """What the admin API needs of the daemon it serves."""

    @property
    def stopping(self) -> bool: ...

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason), without asking the store."""
        ...

    async def ping_store(self) -> None:
        """Raise StoreError when the store cannot be used right now."""
        ...

    async def add_orders(self, order_ids: Iterable[str]) -> int: ...

    async def order_report(self, order_id: str) -> dict[str, Any] | None:
        """What `GET /orders/{id}` shows (the order's row and deliveries), None if unknown."""
        ...

    async def render_metrics(self) -> bytes:
        """The Prometheus exposition, gauges refreshed from the store where it answers."""
        ...

    async def status_snapshot(self) -> StatusSnapshot:
        """What the status page (`GET /`) shows; never raises for a failing store."""
        ...

    async def replay(self, order_ids: Sequence[str]) -> ReplayResult:
        """Queue the final events of these orders again (`orderwatch replay`)."""
        ...


TOKEN_KEY = web.AppKey("token", str)


async def start_admin(
    daemon: AdminTarget,
    settings: AdminSettings,
    *,
    max_connections: int = MAX_CONNECTIONS,
    keepalive_s: float = KEEPALIVE_S,
) -> AdminServer | None:
    """Start the admin server if `admin.listen` is set; returns it, for cleanup."""
    listen = settings.listen
    if not listen:
        return None
    host, port = split_listen(listen)  # checked when the config loaded, as is the token
    token = "" if settings.token is None else settings.token.get_secret_value()
    if token:
        REDACTOR.add_secret(token)
    app = make_app(daemon, token, loopback=is_loopback(host))
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=keepalive_s,
        shutdown_timeout=SHUTDOWN_S,
    )
    await runner.setup()
    http = runner.server
    assert http is not None

    peers: dict[str, int] = {}

    def bounded() -> asyncio.Protocol:
        return _Refused() if len(http.connections) >= max_connections else _PerPeer(http, peers)

    loop = asyncio.get_running_loop()
    try:
        listener = await loop.create_server(bounded, host, port, reuse_address=True)
    except OSError as e:  # port taken, address not on this host: one line, not a traceback
        await runner.cleanup()
        reason = os.strerror(e.errno) if e.errno else str(e)  # asyncio rewords strerror
        raise OrderwatchError(f"admin.listen {host}:{port}: {reason}") from None
    log.info("admin.listening", listen=f"{host}:{port}")
    return AdminServer(listener, runner)


class AdminServer:
    """The listening socket (aiohttp's protocol behind a bound) and the app's runner."""

    def __init__(self, listener: asyncio.AbstractServer, runner: web.AppRunner) -> None:
        self._listener, self._runner = listener, runner

    async def cleanup(self) -> None:
        self._listener.close()
        await self._runner.cleanup()


class _Refused(asyncio.Protocol):
    """What a connection past MAX_CONNECTIONS gets: closed at once, nothing read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()  # uvloop's transports are not asyncio.Transport: no abort() to rely on


class _PerPeer(asyncio.Protocol):
    """aiohttp's protocol for a connection, unless its peer already holds MAX_PER_PEER."""

    def __init__(self, make: Any, peers: dict[str, int]) -> None:
        self._make, self._peers = make, peers
        self._inner: asyncio.Protocol | None = None
        self._peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) else ""
        if self._peers.get(self._peer, 0) >= MAX_PER_PEER:
            transport.close()
            return
        self._peers[self._peer] = self._peers.get(self._peer, 0) + 1
        self._inner = self._make()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is None:
            return
        left = self._peers[self._peer] - 1
        if left:
            self._peers[self._peer] = left
        else:
            del self._peers[self._peer]
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


def make_app(daemon: AdminTarget, token: str, *, loopback: bool = True) -> web.Application:
    """On loopback the Host must name the loopback; off it, the token guards all but
    PUBLIC_PATHS (the config refuses a non-loopback listener without a token)."""
    guards = [_loopback_host if loopback else _token_required, _store_unavailable]
    app = web.Application(client_max_size=MAX_BODY, middlewares=guards)
    app[DAEMON_KEY] = daemon
    app[TOKEN_KEY] = token
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/orders", post_orders)
    app.router.add_get("/orders/{id}", get_order)
    app.router.add_get("/", status_page)
    app.router.add_post("/replay", post_replay)
    return app


@web.middleware
async def _store_unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A failing state store is a JSON 503 the caller may retry, not an HTML 500."""
    try:
        return await handler(request)
    except StoreError as e:
        log.error("store.unavailable", path=request.path, error=str(e))
        return _bad(503, "the state store is unavailable; try again")


@web.middleware
async def _token_required(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in PUBLIC_PATHS and not _authorized(request):
        return _bad(401, "missing or wrong bearer token")
    return await handler(request)


@web.middleware
async def _loopback_host(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On a loopback listener the name the client asked for must be loopback too: a page
    whose domain was rebound to 127.0.0.1 sends its own."""
    host = request.headers.get("Host")  # not request.host: older aiohttp fills in getfqdn()
    if host is not None and not _is_loopback_name(host):  # none: no browser sent this
        return _bad(403, "Host must be a loopback address or localhost")
    return await handler(request)


def _is_loopback_name(host: str) -> bool:
    """A Host header (`name`, `name:port`, `[v6]:port`) that names the loopback."""
    if host.startswith("["):
        name = host[1:].partition("]")[0]
    else:
        name = host.partition(":")[0] if host.count(":") == 1 else host
    return is_loopback(name.lower().rstrip("."))


def _daemon(request: web.Request) -> AdminTarget:
    return request.app[DAEMON_KEY]  # type: ignore[return-value]


async def healthz(request: web.Request) -> web.Response:
    """The loop is alive (this handler ran)."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    d = _daemon(request)
    with contextlib.suppress(StoreError):  # a failing store makes the daemon say why
        await d.ping_store()
    ready, reason = d.readiness()
    return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=await _daemon(request).render_metrics(),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


def _authorized(request: web.Request) -> bool:
    token = request.app[TOKEN_KEY]
    if not token:
        return True
    scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
    # The scheme is case-insensitive (RFC 7235); a byte that is not UTF-8 arrives as a
    # surrogate, which a strict encode would turn into a 500.
    given_bytes = given.strip().encode("utf-8", "surrogateescape")
    return scheme.lower() == "bearer" and hmac.compare_digest(given_bytes, token.encode())


def _bad(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def post_orders(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _bad(401, "missing or wrong bearer token")
    if _daemon(request).stopping:
        return _bad(503, "stopping; send the orders to the next instance")
    ids = await _json_ids(request, MAX_IDS)
    if isinstance(ids, web.Response):
        return ids
    good = [i for i in ids if is_valid_order_id(i)]
    bad = [i[:140] for i in ids if not is_valid_order_id(i)]
    added = await _daemon(request).add_orders(good) if good else 0
    status = 400 if bad and not good else 200
    return web.json_response({"accepted": len(good), "new": added, "invalid": bad}, status=status)


async def _json_ids(request: web.Request, most: int) -> list[str] | web.Response:
    """The ids of a `{"ids": [...]}` JSON body, or the answer that refuses it."""
    if request.content_type != "application/json":
        return _bad(415, "Content-Type must be application/json")
    try:
        body: Any = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _bad(400, 'body must be JSON: {"ids": ["O-..."]}')
    ids = body.get("ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return _bad(400, 'body must be {"ids": [string, ...]}')
    if len(ids) > most:
        return _bad(413, f"at most {most} ids per request")
    return ids


async def status_page(request: web.Request) -> web.Response:
    """The status page: read-only, so on loopback without the token, like GET /orders/{id}."""
    snapshot = await _daemon(request).status_snapshot()
    html = render_status_page(snapshot, token_required=bool(request.app[TOKEN_KEY]))
    return web.Response(text=html, content_type="text/html", headers=PAGE_HEADERS)


async def post_replay(request: web.Request) -> web.Response:
    """Send orders' final events again (`orderwatch replay`). Another site's page cannot:
    the body must be JSON (a form cannot send it; a cross-site fetch needs a preflight that
    is never approved), a browser's cross-site request is refused by its Sec-Fetch-Site,
    the token travels in a header (never a cookie), and on loopback the Host is checked."""
    if not _authorized(request):
        return _bad(401, "missing or wrong bearer token")
    if request.headers.get("Sec-Fetch-Site", "none") not in ("same-origin", "none"):
        return _bad(403, "requests from another site are refused")
    ids = await _json_ids(request, MAX_REPLAY_IDS)
    if isinstance(ids, web.Response):
        return ids
    if bad := [i[:140] for i in ids if not is_valid_order_id(i)]:
        return web.json_response({"error": "invalid order ids", "invalid": bad}, status=400)
    if _daemon(request).stopping:
        return _bad(503, "stopping; replay on the next instance")
    result = await _daemon(request).replay(ids)
    if not result.replayed:
        return _bad(404, "no final event for these orders (unknown, or still pending)")
    if not result.queued:
        return _bad(409, "no sinks configured (webhooks, commands or callbacks)")
    return web.json_response(asdict(result))


async def get_order(request: web.Request) -> web.Response:
    order_id = request.match_info["id"]
    if not is_valid_order_id(order_id):
        return _bad(400, "invalid order id")
    report = await _daemon(request).order_report(order_id)
    if report is None:
        return _bad(404, "unknown order")
    return web.json_response(report)
