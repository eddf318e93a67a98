"""Standard Webhooks: POST the event's exact bytes, signed by the spec authors' own library,
one `v1,` signature per configured secret (rotation). Redirects are failures; 410 disables."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp
from standardwebhooks.webhooks import Webhook

from orderwatch import __version__
from orderwatch.answers import parse_retry_after
from orderwatch.settings import WebhookSettings
from orderwatch.sinks.base import AttemptResult, short_hash
from orderwatch.store.base import EventRecord

MAX_RETRY_AFTER_S = 3600.0


class WebhookSink:
    def __init__(self, settings: WebhookSettings) -> None:
        self.url = settings.url
        parts = urlsplit(settings.url)
        self.id = f"webhook:{parts.hostname}:{short_hash(settings.url)}"
        self.retry_schedule_s = settings.retry_schedule_s
        self.max_concurrency = settings.max_concurrency
        secrets = [s for s in (settings.secret, *settings.secrets) if s is not None]
        self._signers = [Webhook(s.get_secret_value()) for s in secrets]
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.max_concurrency)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
            self._session._retry_connection = False  # every attempt is one we counted
        return self._session

    def headers(self, event: EventRecord, now: datetime) -> dict[str, str]:
        body = event.body.decode()
        signatures = " ".join(s.sign(event.event_id, now, body) for s in self._signers)
        return {
            "webhook-id": event.event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signatures,
            "content-type": "application/json",
            "user-agent": f"orderwatch/{__version__}",
        }

    async def attempt(self, event: EventRecord) -> AttemptResult:
        headers = self.headers(event, datetime.now(UTC))
        try:
            async with self._client().post(
                self.url, data=event.body, headers=headers, allow_redirects=False
            ) as resp:
                await resp.read()
                return _result(resp.status, resp.headers.get("Retry-After"))
        except TimeoutError:
            return AttemptResult(False, "timeout")
        except (aiohttp.ClientError, OSError) as e:
            return AttemptResult(False, f"connection error: {type(e).__name__}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _result(status: int, retry_after: str | None) -> AttemptResult:
    if 200 <= status < 300:
        return AttemptResult(True, f"http {status}")
    if status == 410:
        return AttemptResult(False, "http 410 gone", retry=False, disable_sink=True)
    wait = parse_retry_after(retry_after, time.time())
    return AttemptResult(
        False, f"http {status}", retry_after_s=min(wait, MAX_RETRY_AFTER_S) if wait else None
    )
