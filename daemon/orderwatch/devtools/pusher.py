"""Runa's own push, as the simulator sends it: when an order completes (or fails), a signed
`order.completion` POST to a configured URL, the body as Runa's OpenAPI `webhooks` section
has it, with Svix's headers (`svix-id`, `svix-timestamp`, `svix-signature`) signed by the
Standard Webhooks reference library. Like the real one it may be late (`delay_s`, a range),
lost (`loss`), sent twice (`duplicates`, same svix-id) and retried after a failed answer
(Svix's schedule, shortened: RETRY_S)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from standardwebhooks.webhooks import Webhook

from orderwatch.config.durations import parse_duration
from orderwatch.core.errors import UsageError

RETRY_S = (1.0, 5.0, 30.0)  # after a failed attempt; Svix's own starts 5 s, 5 min, 30 min


@dataclass
class PushOptions:
    url: str
    secret: str  # whsec_...
    loss: float = 0.0  # share of pushes never sent
    delay_s: tuple[float, float] = (0.0, 0.0)  # each push waits a uniform draw from this
    duplicates: float = 0.0  # share sent a second time, same svix-id, a moment later


def parse_delay(text: str) -> tuple[float, float]:
    """`1s` or a range `0s..1s` (durations as the config writes them)."""
    low, _, high = text.partition("..")
    a, b = parse_duration(low), parse_duration(high or low)
    if not 0 <= a <= b:
        raise ValueError(f"expected a delay or a range low..high, got {text!r}")
    return a, b


def completion_body(order_id: str, status: str) -> bytes:
    """CompletedOrderWebhook (basic details) or FailedOrderWebhook, as Runa sends them."""
    if status != "COMPLETED":
        return json.dumps({"id": order_id, "status": status}).encode()
    now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return json.dumps(
        {
            "id": order_id,
            "status": "COMPLETED",
            "created_at": now,
            "completed_at": now,
            "description": None,
            "payment_method": {"type": "ACCOUNT_BALANCE", "currency": "USD"},
            "currency": "USD",
            "total_price": "10.00",
            "total_discount": "0.00",
        }
    ).encode()


def svix_headers(
    secret: str, msg_id: str, body: bytes, at: datetime | None = None
) -> dict[str, str]:
    """The three headers Svix signs a message with."""
    at = at or datetime.now(UTC)
    return {
        "svix-id": msg_id,
        "svix-timestamp": str(int(at.timestamp())),
        "svix-signature": Webhook(secret).sign(msg_id, at, body),
        "content-type": "application/json",
    }


class Pusher:
    """Schedules and sends pushes; `close()` drops what is still to come."""

    def __init__(self, options: PushOptions, rng: random.Random | None = None) -> None:
        self.options = options
        self._rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent: list[tuple[str, float]] = []  # (order id, loop time) of each 2xx
        self.lost = 0

    def order_final(self, order_id: str, status: str, in_s: float) -> None:
        """The order completes `in_s` seconds from now: push it then (plus the delay)."""
        o = self.options
        if self._rng.random() < o.loss:
            self.lost += 1
            return
        delay = max(0.0, in_s) + self._rng.uniform(*o.delay_s)
        msg_id = "msg_" + secrets.token_urlsafe(18)
        self._spawn(self._send(order_id, status, msg_id, delay))
        if self._rng.random() < o.duplicates:
            self._spawn(self._send(order_id, status, msg_id, delay + self._rng.uniform(0, 1)))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, order_id: str, status: str, msg_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        body = completion_body(order_id, status)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        for wait in (*RETRY_S, None):
            headers = svix_headers(self.options.secret, msg_id, body)  # signed per attempt
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self._session.post(self.options.url, data=body, headers=headers) as r:
                    if 200 <= r.status < 300:
                        self.sent.append((order_id, asyncio.get_running_loop().time()))
                        return
            if wait is None:
                return
            await asyncio.sleep(wait)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()


def add_push_arguments(p: argparse.ArgumentParser) -> None:
    """`orderwatch simulate`'s flags for Runa's own push."""
    g = p.add_argument_group("Runa's own push (order.completion through Svix), off by default")
    g.add_argument(
        "--push-url",
        metavar="URL",
        help="POST a signed push here as each order completes (default: none, no pushes)",
    )
    g.add_argument(
        "--push-secret",
        metavar="WHSEC",
        help="the whsec_... secret pushes are signed with (default: none; needed with --push-url)",
    )
    g.add_argument(
        "--push-loss",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of pushes never sent (default: %(default)s)",
    )
    g.add_argument(
        "--push-delay",
        default="0s",
        metavar="DELAY",
        help="after completion: 1s, or a range 0s..1s (default: %(default)s)",
    )
    g.add_argument(
        "--push-duplicates",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share sent twice, same svix-id (default: %(default)s)",
    )


def push_options_from_args(args: argparse.Namespace) -> PushOptions | None:
    if not args.push_url:
        return None
    if not args.push_secret:
        raise UsageError("--push-url needs --push-secret (whsec_...)")
    try:
        delay = parse_delay(args.push_delay)
    except ValueError as e:
        raise UsageError(f"--push-delay: {e}") from None
    return PushOptions(args.push_url, args.push_secret, args.push_loss, delay, args.push_duplicates)
