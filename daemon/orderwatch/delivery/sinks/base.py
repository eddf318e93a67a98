"""What every sink is: a stable id (orderwatch.config.sink_ids), a retry schedule, a concurrency
bound, one attempt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from orderwatch.config.sink_ids import callback_sink_id, command_sink_id, webhook_sink_id
from orderwatch.store.base import EventRecord

__all__ = ["callback_sink_id", "command_sink_id", "webhook_sink_id"]  # where sinks import them

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
