"""What every sink is: a stable id, a retry schedule, a concurrency bound, one attempt."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from orderwatch.store.base import EventRecord


@dataclass(frozen=True, slots=True)
class AttemptResult:
    delivered: bool
    outcome: str  # short and safe for logs: "http 200", "timeout", "exit 3"
    retry: bool = True  # False: no more attempts (with disable_sink)
    disable_sink: bool = False
    retry_after_s: float | None = None


class Sink(Protocol):
    id: str
    retry_schedule_s: tuple[float, ...]
    max_concurrency: int

    async def attempt(self, event: EventRecord) -> AttemptResult: ...

    async def close(self) -> None: ...


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
