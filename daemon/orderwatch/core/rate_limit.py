"""What every rate limiter offers the poller (the process's own `polling.limiter`, or the one
a shared store brings for all its replicas), and the rules both limiters share."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import Protocol

# When this task's last send was granted (a task sends one request at a time): `confirm` reads it.
GRANTED: ContextVar[float | None] = ContextVar("orderwatch_send_granted", default=None)


class RateLimiter(Protocol):
    """What the poller needs: wait for permission to send one request."""

    async def acquire(self) -> None: ...

    def try_acquire(self) -> bool:
        """Take a send at once if one is free without waiting and nobody is queued ahead;
        False otherwise (then `await acquire()`). The hot path: no coroutine, no lock."""

    async def hold(self, seconds: float) -> None:
        """The API answered 429: nobody this limiter serves sends for `seconds`."""

    def confirm(self, granted: float | None = None) -> Awaitable[None] | None:
        """This task's request is about to leave (its connection is ready); see SpacedLimiter.
        None when there is nothing to wait for, as nearly always: the hot path then makes no
        coroutine. Otherwise an awaitable that returns once the send may leave."""


def after_window(log: deque[float], window_s: float, t: float) -> float:
    """The hard log's rule: `t`, or later if `log` (the last sends, `maxlen` = the cap) is
    full, when its oldest send is one window old."""
    return max(t, log[0] + window_s) if len(log) == log.maxlen else t
