"""A small webhook receiver for the demo and tests: verifies every POST with the Standard
Webhooks reference library and records what arrived. Prints no payout links."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Received:
    event_id: str
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
        *,
        fail_first: int = 0,
        fail_status: int = 500,
        verbose: bool = False,
        delay_s: float = 0.0,
    ) -> None:
        self.delay_s = delay_s  # every answer takes this long (a slow endpoint)
        self._verifier = Webhook(secret)
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.verbose = verbose
        self.attempts = 0
        self.attempt_ids: list[str] = []  # webhook-id of every attempt, failed ones too
        self.hang = False  # never answer (a dead-but-connected endpoint)
        self.events: list[Received] = []
        self.app = web.Application()
        self.app.router.add_post("/hook", self._hook)

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.attempts += 1
        self.attempt_ids.append(request.headers.get("webhook-id", ""))
        if self.hang:
            await asyncio.sleep(3600)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.attempts <= self.fail_first:
            return web.Response(status=self.fail_status)
        try:
            self._verifier.verify(body, dict(request.headers))
            verified = True
        except (WebhookVerificationError, ValueError):
            verified = False
        event = json.loads(body) if verified else {}
        data = event.get("data") or {}
        got = Received(
            request.headers.get("webhook-id", ""),
            str(event.get("type", "")),
            str(data.get("id", "")),
            verified,
            time.monotonic(),
            body,
            dict(request.headers),
        )
        self.events.append(got)
        if self.verbose:
            check = "signature ok" if verified else "SIGNATURE INVALID"
            print(
                f"webhook  {got.order_id}  {got.event_type:<16} {got.event_id}  {check}", flush=True
            )
        return web.Response(status=204 if verified else 400)


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
