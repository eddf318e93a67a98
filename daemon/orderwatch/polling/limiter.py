"""The global request limiter: the API's rate ceiling, as the server measures it.

Every GET to Runa passes `acquire()` exactly once, just before it is sent. Two rules together:
- even spacing: sends are at least `(1 + margin) / rate` apart, so the server sees a smooth
  stream, not a burst at the top of each second;
- a hard log: never more than `floor(rate)` sends in any window of `1 + margin` seconds, counted
  at the moment `acquire` returns, so a stalled event loop that then releases late cannot bunch
  sends together.
The margin absorbs the jitter between leaving `acquire` and arriving at the server. A send
that leaves later than that (its connection had to be opened, the loop stalled) is counted
again when it leaves: the client calls `confirm` once the request's connection is ready, and
a send granted more than `margin` ago is moved to that moment, after waiting while the window
is full. So the log holds for the times the server sees. Waiters queue on an `asyncio.Lock`
(FIFO) and only its holder sleeps on one timer: no polling, no CPU while waiting. A new
limiter starts with its window full (`start_full`), because a process restarted after a crash
cannot know what its predecessor sent in its last second.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

from orderwatch.core.rate_limit import GRANTED, after_window

CATCH_UP_S = 0.005  # at most this much lateness is made up by sending closer together


class SpacedLimiter:
    """Even spacing plus a sliding-window log; see the module docstring."""

    def __init__(
        self,
        rate: float,
        *,
        margin: float = 0.02,
        start_full: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.margin = margin
        self.window_s = 1.0 + margin
        self.interval_s = self.window_s / rate
        self.capacity = max(1, math.floor(rate))
        self._clock = clock
        self._log: deque[float] = deque(maxlen=self.capacity)
        self._lock = asyncio.Lock()
        self._queued = 0  # callers inside `acquire`: `try_acquire` never passes them
        now = clock()
        self._next = now + self.window_s if start_full else now
        self.waited_s = 0.0  # total time callers spent waiting (a metric)
        self._catch_up_s = max(CATCH_UP_S, 0.25 * self.interval_s)

    @property
    def catch_up_s(self) -> float:
        """How much lateness a send may make up by following the one before more closely."""
        return self._catch_up_s

    def earliest(self, now: float) -> float:
        """When the next send may happen (pure: no state changes)."""
        return after_window(self._log, self.window_s, max(now, self._next))

    async def hold(self, seconds: float) -> None:
        """Nothing to do: this limiter serves one process, whose gate already pauses it."""

    def try_acquire(self) -> bool:
        if self._queued:
            return False
        now = self._clock()
        if self.earliest(now) > now:
            return False
        self._take(now)
        return True

    async def acquire(self) -> None:
        start = self._clock()
        self._queued += 1
        try:
            async with self._lock:
                # One timer for the lock holder; other waiters park on the lock.
                while (wait := self.earliest(now := self._clock()) - now) > 0:  # noqa: ASYNC110
                    await asyncio.sleep(wait)
                self._take(now)
        finally:
            self._queued -= 1
        self.waited_s += now - start

    def confirm(self, granted: float | None = None) -> Awaitable[None] | None:
        """Called as this task's granted request is about to be written (`granted`: when it
        was granted; this task's last grant by default). Within `margin` of its grant, as
        nearly always, nothing to do (None); later than that, it is counted now instead, once
        the window has room for it (await what this returns)."""
        if granted is None:
            granted = GRANTED.get()
        if granted is None:
            return None
        GRANTED.set(None)
        now = self._clock()
        if now - granted <= self.margin:
            return None
        return self._recount(granted, now)

    async def _recount(self, granted: float, now: float) -> None:
        """A send granted at `granted` leaves at `now`: count it then."""
        with contextlib.suppress(ValueError):  # already out of the log: it is that old
            self._log.remove(granted)
        while (wait := after_window(self._log, self.window_s, now) - now) > 0:
            await asyncio.sleep(wait)
            now = self._clock()
        self._log.append(now)

    def _take(self, now: float) -> None:
        self._log.append(now)
        GRANTED.set(now)
        # Slots sit on a grid, so a timer that fires late does not push every later slot
        # back (which cost a measurable share of the rate): up to CATCH_UP_S
        # of lateness is made up by the waiters queued behind. After idle, spacing restarts
        # from now. The log still caps every window, whatever the grid.
        self._next = max(self._next, now - self._catch_up_s) + self.interval_s
