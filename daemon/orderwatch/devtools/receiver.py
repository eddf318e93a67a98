"""A small webhook receiver for the demo and tests: verifies every POST with the Standard
Webhooks reference library and records what arrived. Prints no payout links: one line per
event with the order id, type, webhook-id and whether the signature held.

    receiver = Receiver(secret, fail_first=2, fail_status=503)
    async with running_receiver(receiver) as url:
        ...  # point a webhook at `url`; receiver.events fills up

Every request counts as an attempt (`attempts`, `attempt_ids`). Every request not failed
on purpose becomes one of `events` (answered 204, or 400 when its signature does not verify).
The first `fail_first` requests are answered `fail_status` (with `fail_headers`, e.g.
Retry-After or Location); `hang` makes it accept requests and never answer."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from orderwatch.core.pulse import Pulse


@dataclass(frozen=True)
class Received:
    event_id: str  # the webhook-id header
    event_type: str
    order_id: str
    verified: bool
    received_at: float  # time.monotonic()
    body: bytes
    headers: dict[str, str]


class Receiver:
    def __init__(
        self,
        secret: str,
        fail_first: int = 0,
        fail_status: int = 500,
        *,
        fail_headers: Mapping[str, str] | None = None,
        verbose: bool = False,
        delay_s: float = 0.0,
    ) -> None:
        self._verifier = Webhook(secret)
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.fail_headers = dict(fail_headers or {})
        self.verbose = verbose
        self.delay_s = delay_s  # every answer takes this long (a slow endpoint)
        self.hang = False  # accept and never answer (a dead-but-connected endpoint)
        self.attempts = 0
        self.attempt_ids: list[str] = []  # webhook-id of every request, failed ones too
        self.in_flight = 0  # requests being handled right now
        self.events: list[Received] = []
        self.changed = Pulse()  # a request arrived, or was answered (tests wait on it)
        self.app = web.Application()
        self.app.router.add_post("/hook", self._hook)

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.attempts += 1
        self.attempt_ids.append(request.headers.get("webhook-id", ""))
        self.in_flight += 1
        self.changed()
        try:
            return await self._answer(request, body)
        finally:
            self.in_flight -= 1
            self.changed()

    async def _answer(self, request: web.Request, body: bytes) -> web.Response:
        if self.hang:
            await asyncio.Event().wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.attempts <= self.fail_first:
            return web.Response(status=self.fail_status, headers=self.fail_headers)
        got = self._record(request.headers.get("webhook-id", ""), body, dict(request.headers))
        if self.verbose:
            check = "signature ok" if got.verified else "SIGNATURE INVALID"
            print(
                f"webhook  {got.order_id}  {got.event_type:<16} {got.event_id}  {check}", flush=True
            )
        return web.Response(status=204 if got.verified else 400)

    def _record(self, event_id: str, body: bytes, headers: dict[str, str]) -> Received:
        event: Any = {}
        try:
            event = self._verifier.verify(body, headers)
            verified = True
        except (WebhookVerificationError, ValueError):  # a malformed signature: ValueError
            verified = False
            event = _loads(body)
        if not isinstance(event, dict):
            event = {}
        data = event.get("data")
        got = Received(
            event_id=event_id,
            event_type=str(event.get("type", "")),
            order_id=str(data.get("id", "")) if isinstance(data, dict) else "",
            verified=verified,
            received_at=time.monotonic(),
            body=body,
            headers=headers,
        )
        self.events.append(got)
        return got


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return {}


@asynccontextmanager
async def running_receiver(receiver: Receiver, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve on a free loopback port; yields the hook URL."""
    runner = web.AppRunner(
        receiver.app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True
    )
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://{host}:{port}/hook"
    finally:
        await runner.cleanup()
