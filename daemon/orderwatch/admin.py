"""The admin HTTP server: health, readiness, metrics, and a small orders API.

Loopback by default. The writing endpoint (`POST /orders`) needs `Authorization: Bearer
<token>` when `admin.token` (or `admin.token_file`) is set; the config refuses a non-loopback
`listen` without a token. Nothing here ever returns a payload: those hold payout links.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from orderwatch.errors import OrderwatchError, StoreError
from orderwatch.ids import is_valid_order_id
from orderwatch.settings import split_listen

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler

    from orderwatch.daemon import Daemon

log = structlog.get_logger("orderwatch.admin")
MAX_BODY = 1024 * 1024
MAX_IDS = 10_000
DAEMON_KEY = web.AppKey("daemon", object)
TOKEN_KEY = web.AppKey("token", str)


def read_token(daemon: Daemon) -> str:
    """The bearer token (read from admin.token_file, if given, when the config loaded)."""
    token = daemon.settings.admin.token
    return "" if token is None else token.get_secret_value()


async def start_admin(daemon: Daemon) -> web.AppRunner | None:
    """Start the admin server if `admin.listen` is set; returns its runner for cleanup."""
    listen = daemon.settings.admin.listen
    if not listen:
        return None
    host, port = split_listen(listen)  # checked when the config loaded, as is the token
    token = read_token(daemon)
    from orderwatch.logs import REDACTOR

    if token:
        REDACTOR.add_secret(token)
    app = make_app(daemon, token)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as e:  # port taken, address not on this host: one line, not a traceback
        await runner.cleanup()
        reason = os.strerror(e.errno) if e.errno else str(e)  # asyncio rewords strerror
        raise OrderwatchError(f"admin.listen {host}:{port}: {reason}") from None
    log.info("admin.listening", listen=f"{host}:{port}")
    return runner


def make_app(daemon: Daemon, token: str) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_store_unavailable])
    app[DAEMON_KEY] = daemon
    app[TOKEN_KEY] = token
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/orders", post_orders)
    app.router.add_get("/orders/{id}", get_order)
    return app


@web.middleware
async def _store_unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A failing state store is a JSON 503 the caller may retry, not an HTML 500."""
    try:
        return await handler(request)
    except StoreError as e:
        log.error("store.unavailable", path=request.path, error=str(e))
        return _bad(503, "the state store is unavailable; try again")


def _daemon(request: web.Request) -> Daemon:
    return request.app[DAEMON_KEY]  # type: ignore[return-value]


async def healthz(request: web.Request) -> web.Response:
    """The loop is alive (this handler ran)."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    d = _daemon(request)
    ready, reason = d.readiness()
    if ready and d.store is not None:
        try:
            await d.store.ping()
        except StoreError:
            ready, reason = False, "the state store is unavailable"
    return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    d = _daemon(request)
    with contextlib.suppress(StoreError):  # families still render; /readyz says what is wrong
        await d.refresh_gauges(deliveries=True)
    return web.Response(
        body=d.metrics.render(),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


def _authorized(request: web.Request) -> bool:
    token = request.app[TOKEN_KEY]
    if not token:
        return True
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def _bad(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def post_orders(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _bad(401, "missing or wrong bearer token")
    if _daemon(request).stopping:
        return _bad(503, "stopping; send the orders to the next instance")
    try:
        body: Any = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _bad(400, 'body must be JSON: {"ids": ["O-..."]}')
    ids = body.get("ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return _bad(400, 'body must be {"ids": [string, ...]}')
    if len(ids) > MAX_IDS:
        return _bad(413, f"at most {MAX_IDS} ids per request")
    good = [i for i in ids if is_valid_order_id(i)]
    bad = [i[:140] for i in ids if not is_valid_order_id(i)]
    added = await _daemon(request).add_orders(good) if good else 0
    status = 400 if bad and not good else 200
    return web.json_response({"accepted": len(good), "new": added, "invalid": bad}, status=status)


async def get_order(request: web.Request) -> web.Response:
    order_id = request.match_info["id"]
    if not is_valid_order_id(order_id):
        return _bad(400, "invalid order id")
    d = _daemon(request)
    assert d.store is not None
    rows = await d.store.get_orders([order_id])
    if not rows:
        return _bad(404, "unknown order")
    deliveries = await d.store.get_deliveries([order_id])
    return web.json_response({**asdict(rows[0]), "deliveries": [asdict(x) for x in deliveries]})
