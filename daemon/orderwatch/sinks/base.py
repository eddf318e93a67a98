"""What every sink is: a stable id, a retry schedule, a concurrency bound, one attempt.

Sink ids are stored with every queued delivery, so they must stay the same across restarts
and must not carry secrets (they appear in logs and `status`):
`webhook:<host>:<sha256(url)[:16]>`, `command:<basename of argv[0]>:<sha256(argv)[:16]>`,
`callback:<package.module:function>`."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from orderwatch.store.base import EventRecord

# Commands and callbacks have no per-sink schedule key: the webhook default, like Svix's.
DEFAULT_SCHEDULE_S = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt came to. The outbox worker turns it into the delivery's next state."""

    delivered: bool
    outcome: str  # short and safe for logs: "http 200", "timeout", "exit 3"; never a URL or body
    retry: bool = True  # False: no more attempts for this delivery
    retry_after_s: float | None = None  # the receiver asked for at least this long a pause


class Sink(Protocol):
    """One destination. `attempt` never raises for a failed delivery: it returns the result."""

    id: str
    retry_schedule_s: tuple[float, ...]  # delays between attempts: N delays give N+1 attempts
    max_concurrency: int  # attempts in flight to this sink at most
    timeout_s: float | None  # an attempt's upper bound (its claim's lease must outlive it)

    async def attempt(self, event: EventRecord) -> AttemptResult: ...

    async def close(self) -> None: ...


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def webhook_sink_id(url: str) -> str:
    """Host for readability, a hash for identity: no path, query or userinfo in logs."""
    return f"webhook:{urlsplit(url).hostname or '?'}:{short_hash(url)}"


def command_sink_id(argv: Sequence[str]) -> str:
    return f"command:{os.path.basename(argv[0])}:{short_hash(json.dumps(list(argv)))}"


def callback_sink_id(name: str) -> str:
    return f"callback:{name}"
