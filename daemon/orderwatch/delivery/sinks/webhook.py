"""Standard Webhooks: POST the event's exact bytes, signed by the spec authors' own library,
one `v1,` signature per configured secret (rotation: each one alone verifies).

Any 2xx is delivered; everything else (410 and redirects included: redirects are never
followed) is retried, no sooner than a `Retry-After` asks, capped at an hour.
Nothing here logs: outcomes name a status or an error class, never the URL, secret or body."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime

import aiohttp
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from orderwatch.config.models import WebhookSettings
from orderwatch.core.errors import UsageError
from orderwatch.core.retry_after import parse_retry_after
from orderwatch.core.version import __version__
from orderwatch.delivery.sinks.base import AttemptResult, webhook_sink_id
from orderwatch.store.base import EventRecord

MAX_RETRY_AFTER_S = 3600.0
MAX_RESPONSE_READ = 64 * 1024  # enough to keep the connection reusable; the body is unused
BODY_READ_S = 1.0  # for that read; the status alone decides the attempt


class WebhookSink:
    def __init__(
        self, settings: WebhookSettings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.url = settings.url
        self.id = webhook_sink_id(settings.url)
        self.retry_schedule_s = settings.retry_schedule_s
        self.max_concurrency = settings.max_concurrency
        self.timeout_s: float | None = settings.timeout_s
        self.clock = clock
        self._signers = [_signer(s.get_secret_value(), self.id) for s in _secrets(settings)]
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_concurrency),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            )
            self._session._retry_connection = False  # every request sent is an attempt we count
        return self._session

    def headers(self, event: EventRecord, now: float) -> dict[str, str]:
        """Fresh timestamp per attempt; the id stays the event's across retries and replays."""
        stamp = datetime.fromtimestamp(math.floor(now), UTC)  # the library signs whole seconds
        body = event.body.decode()  # the library re-encodes it as UTF-8: the same bytes
        signatures = [s.sign(event.event_id, stamp, body) for s in self._signers]
        return {
            "webhook-id": event.event_id,
            "webhook-timestamp": str(math.floor(now)),
            "webhook-signature": " ".join(signatures),
            "content-type": "application/json",
            "user-agent": f"orderwatch/{__version__}",
        }

    async def attempt(self, event: EventRecord) -> AttemptResult:
        headers = self.headers(event, self.clock())
        try:
            async with self._client().post(
                self.url, data=event.body, headers=headers, allow_redirects=False
            ) as resp:
                result = classify(resp.status, resp.headers.get("Retry-After"), self.clock())
                # The status is the answer; reading a little of the body only lets the
                # connection be reused, and a body that stalls must not undo a 2xx.
                with contextlib.suppress(TimeoutError, aiohttp.ClientError, OSError):
                    async with asyncio.timeout(BODY_READ_S):
                        await resp.content.read(MAX_RESPONSE_READ)
                return result
        except TimeoutError:
            return AttemptResult(False, "timeout")
        except (aiohttp.ClientError, OSError) as e:
            return AttemptResult(False, f"connection error: {type(e).__name__}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def classify(status: int, retry_after: str | None, now: float) -> AttemptResult:
    """A response status (and Retry-After) as an attempt result."""
    if 200 <= status < 300:
        return AttemptResult(True, f"http {status}")
    wait = parse_retry_after(retry_after, now)
    return AttemptResult(
        False,
        f"http {status}",
        retry_after_s=None if wait is None else min(wait, MAX_RETRY_AFTER_S),
    )


def _secrets(settings: WebhookSettings) -> list[SecretStr]:
    """The current secret first, then the ones kept during a rotation."""
    return [s for s in (settings.secret, *settings.secrets) if s is not None]


def _signer(secret: str, sink_id: str) -> Webhook:
    try:
        # Strictly first: the library's decoder skips what is not base64 ("-" and "_" of
        # URL-safe base64 among it) and would sign with another key than the receiver's.
        # Missing padding is the same key (the library pads too), so it is mended here.
        raw = secret.removeprefix("whsec_")
        if not base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True):
            raise ValueError("empty")
        return Webhook(secret)
    except Exception as e:  # binascii.Error, ValueError, EmptyWebhookSecretError
        # the message names the endpoint by its id only: never the secret or the URL's query
        raise UsageError(
            f"webhook {sink_id}: secret is not a Standard Webhooks secret"
            f" ('whsec_' + base64): {type(e).__name__}"
        ) from None
