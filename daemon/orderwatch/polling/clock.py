"""The wall clock's steps back. Schedules are wall-clock times (they survive restarts): after
the clock steps back (NTP fixing a wrong RTC, `date -s`), every order looks due that much
later. The scheduler asks `step_back()` each pass and, when it is not 0, pulls what lies
beyond any schedule it makes to now (`pull_forward`)."""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from orderwatch.config.models import PollingSettings
from orderwatch.store.base import Store

log = structlog.get_logger("orderwatch.poller")
CLOCK_STEP_S = 5.0  # a step back of the wall clock bigger than this is acted on


class ClockWatch:
    def __init__(self, wall: Callable[[], float]) -> None:
        self._wall = wall
        self._offset = wall() - time.monotonic()  # moves when the wall clock steps

    def step_back(self) -> float:
        """How far the wall clock stepped back since the last pass (0: not, or by less than
        CLOCK_STEP_S, which slewing and jitter never reach). The reference moves only once
        the step is acted on (`settle`)."""
        offset = self._wall() - time.monotonic()
        step = self._offset - offset
        if step > CLOCK_STEP_S:
            return step
        self._offset = offset
        return 0.0

    def settle(self, now: float) -> None:
        self._offset = now - time.monotonic()


async def pull_forward(
    store: Store, polling: PollingSettings, lease_s: float, step: float, now: float
) -> None:
    """Pull what lies beyond any schedule we make (the longest interval, the first delay, a
    lease) to now. Webhook retries are wall-clock times too, and the scheduler is the
    process's one watch on the clock: waiting retries come `step` sooner (their delays run to
    hours, so no horizon would tell a shifted one from a long one)."""
    p = polling
    horizon = max(p.initial_delay_s, p.max_interval_s * (1 + p.jitter), lease_s)
    moved = await store.pull_forward(now + horizon, now)
    retries = await store.shift_retries(step, now)
    log.warning(
        "clock.stepped_back",
        seconds=round(step, 1),
        orders_moved=moved,
        retries_moved=retries,
    )
