"""The listener for Runa's own `order.completion` push (through Svix): its own aiohttp server,
apart from the admin API, usually behind a TLS reverse proxy (docs/push.md).

Every request is verified before anything else is done with it: a missing header, a
timestamp more than 5 minutes off or no valid signature is a 401 and nothing more. Then, in
order: a body over MAX_BODY is a 413; a verified body that is no event (not JSON, an order
completion without a valid order ID) a 400; any other event (`product.update`...) a 2xx,
logged and ignored. An order completion is committed (push_intake) before its 2xx.

A push never makes an order final: it only makes it due now. The GET decides, through the
same limiter, gate and pauses as every other."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from orderwatch.config.models import PushSettings, split_listen
from orderwatch.core.errors import OrderwatchError, StoreError
from orderwatch.intake.push_intake import PushIntake
from orderwatch.intake.push_verify import (
    Completion,
    NotAnEvent,
    SvixVerifier,
    Unverified,
    read_event,
    signed_headers,
)

log = structlog.get_logger("orderwatch.push")
MAX_BODY = 64 * 1024  # an order completion is well under 1 KiB
KEEPALIVE_S = 15.0
SHUTDOWN_S = 1.0  # what a stop waits for requests in progress: their commits are quick
OUTCOMES = ("accepted", "duplicate", "bad_signature", "ignored", "rejected")


class PushMetrics:
    """`orderwatch_pushes_total{outcome}`, every outcome present from the start."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.pushes = Counter(
            "orderwatch_pushes",
            "Requests to the push listener's path, by outcome: accepted (an order completion,"
            " committed), duplicate (its svix-id seen before), bad_signature (401), ignored"
            " (another event, or an order not tracked), rejected (400, 413).",
            ["outcome"],
            registry=registry,
        )
        for outcome in OUTCOMES:
            self.pushes.labels(outcome=outcome)

    def count(self, outcome: str) -> None:
        self.pushes.labels(outcome=outcome).inc()


class PushListener:
    """The app and its handler; `serve` binds it."""

    def __init__(
        self, settings: Callable[[], PushSettings], intake: PushIntake, metrics: PushMetrics
    ) -> None:
        self._settings = settings  # read per request: a reload's secrets apply at once
        self._verifier = SvixVerifier(settings().all_secrets())
        self._built_from = settings()
        self._intake = intake
        self._metrics = metrics
        self.app = web.Application(client_max_size=MAX_BODY)
        self.app.router.add_post(settings().path, self._handle)  # a new one needs a restart
        self._runner: web.AppRunner | None = None
        self.port = 0

    def _current(self) -> SvixVerifier:
        """The verifier of the settings in force, and their track_unknown for the intake."""
        settings = self._settings()
        if settings is not self._built_from:
            self._verifier = SvixVerifier(settings.all_secrets())
            self._built_from = settings
        self._intake.track_unknown = settings.track_unknown
        return self._verifier

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            headers = signed_headers(request.headers)
            if (request.content_length or 0) > MAX_BODY:
                return self._answer(413, "rejected", error=f"body over {MAX_BODY} bytes")
            body = await request.read()
            self._current().verify(body, headers)
            event = read_event(body)
        except Unverified as e:
            log.warning("push.unverified", reason=str(e), peer=request.remote)
            return self._answer(401, "bad_signature", error=str(e))
        except web.HTTPRequestEntityTooLarge:
            return self._answer(413, "rejected", error=f"body over {MAX_BODY} bytes")
        except NotAnEvent as e:
            log.warning("push.rejected", reason=str(e), push_id=headers["webhook-id"])
            return self._answer(400, "rejected", error=str(e))
        push_id = headers["webhook-id"]
        if not isinstance(event, Completion):
            log.info("push.ignored", event_type=event.event_type, push_id=push_id)
            return self._answer(200, "ignored", event_type=event.event_type)
        return await self._accept(push_id, event)

    async def _accept(self, push_id: str, event: Completion) -> web.Response:
        try:
            outcome = await self._intake.submit(push_id, event.order_id)
        except StoreError as e:
            log.error("store.unavailable", push_id=push_id, order_id=event.order_id, error=str(e))
            return web.json_response({"error": "the state store is unavailable"}, status=503)
        log.info(
            "push.received",
            order_id=event.order_id,
            push_id=push_id,
            status=event.status,
            outcome=outcome,
        )
        metric = {"duplicate": "duplicate", "untracked": "ignored"}.get(outcome, "accepted")
        return self._answer(200, metric, outcome=outcome)

    def _answer(self, status: int, metric: str, **body: Any) -> web.Response:
        self._metrics.count(metric)
        return web.json_response(body, status=status)

    async def serve(self) -> None:
        """Bind `push.listen`. Raises OrderwatchError when it cannot (one line)."""
        settings = self._built_from
        assert settings.listen is not None
        host, port = split_listen(settings.listen)
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=KEEPALIVE_S,
            shutdown_timeout=SHUTDOWN_S,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            reason = os.strerror(e.errno) if e.errno else str(e)
            raise OrderwatchError(f"push.listen {host}:{port}: {reason}") from None
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("push.listening", listen=f"{host}:{self.port}", path=settings.path)

    async def close(self) -> None:
        """Stop listening (requests in progress get SHUTDOWN_S), then the intake's tasks."""
        if self._runner is not None:
            await self._runner.cleanup()
        await self._intake.close()
