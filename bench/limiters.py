"""0. Limiters compared (no HTTP): the requested asyncio-throttle, aiolimiter, and ours, with
many callers parked at once. Achieved rate, the busiest 1-second window counted at release,
release order (share of callers served in arrival order) and CPU while callers wait."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.common import Report
from orderwatch.devtools.simulator import max_in_window
from orderwatch.polling.limiter import SpacedLimiter

RATE = 100


def _throttle(rate: int) -> Callable[[], Awaitable[Any]]:
    from asyncio_throttle.throttler import Throttler

    t = Throttler(rate_limit=rate, period=1.0)

    async def acquire() -> None:
        async with t:
            pass

    return acquire


def _aiolimiter(rate: int) -> Callable[[], Awaitable[Any]]:
    from aiolimiter import AsyncLimiter

    lim = AsyncLimiter(rate, 1.0)

    async def acquire() -> None:
        async with lim:
            pass

    return acquire


def _ours(rate: int) -> Callable[[], Awaitable[Any]]:
    return SpacedLimiter(rate, start_full=False).acquire


async def measure(
    acquire: Callable[[], Awaitable[Any]], waiters: int, seconds: float
) -> dict[str, float]:
    released: list[tuple[float, int]] = []
    stop = time.monotonic() + seconds

    async def caller(i: int) -> None:
        await acquire()
        released.append((time.monotonic(), i))

    c0, start = time.process_time(), time.monotonic()
    tasks = [asyncio.create_task(caller(i)) for i in range(waiters)]
    await asyncio.sleep(0)  # all parked, in arrival order 0..n-1
    await asyncio.sleep(max(0.0, stop - time.monotonic()))
    cpu = time.process_time() - c0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    times = [t for t, _ in released]
    order = [i for _, i in released]
    in_order = sum(1 for a, b in itertools.pairwise(order) if b == a + 1)
    # achieved rate over whole seconds after the first (bursty limiters release at edges)
    span = int(seconds) - 1
    rate = sum(1 for t in times if start + 1 <= t < start + 1 + span) / span
    return {
        "rate": rate,
        "busiest": max_in_window(times),
        "fifo": in_order / max(1, len(order) - 1),
        "cpu": cpu / seconds * 100,
    }


async def run(report: Report, smoke: bool) -> None:
    seconds = 3.0 if smoke else 5.0
    candidates = {"asyncio-throttle": _throttle, "aiolimiter": _aiolimiter, "orderwatch": _ours}
    for waiters in (1000, 10000):
        for name, make in candidates.items():
            try:
                acquire = make(RATE)
            except ImportError:
                report.add("limiters", f"{name}: not installed", "-")
                continue
            m = await measure(acquire, waiters, seconds)
            label = f"{name}, {waiters:,} waiters @ {RATE}/s"
            report.add("limiters", f"{label}: rate", m["rate"])
            report.add(
                "limiters",
                f"{label}: busiest 1 s",
                m["busiest"],
                f"<= {RATE}",
                m["busiest"] <= RATE,
            )
            report.add("limiters", f"{label}: FIFO share", m["fifo"])
            report.add("limiters", f"{label}: CPU % of a core", m["cpu"])
