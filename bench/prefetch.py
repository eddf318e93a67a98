"""How often the overhead bench's workers wait for claims: the share of prefetch-queue gets
that found it empty, the worker time spent waiting there, and how long claims take (from the
poller's call to its answer) and how large they are. A diagnostic, not part of the table.

    python -m bench.prefetch [--seconds 6] [--rounds 2]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from bench import inproc, overhead
from bench.common import diagnostic_main
from orderwatch.ops.daemon import Daemon


async def one_round(base: str, seconds: float) -> None:
    measured, make_daemon = overhead.measured, inproc.daemon  # looked up when it runs
    running: list[Daemon] = []

    @asynccontextmanager
    async def keeping(s: Any) -> AsyncIterator[Daemon]:
        async with make_daemon(s) as d:
            running.append(d)
            yield d

    async def counting(seconds: float, count: Callable[[], Awaitable[int]]) -> overhead.Run:
        d = running[-1]
        assert d.poller is not None and d.store is not None
        ready, store = d.poller._ready, d.store
        get, claim_due = ready.get, store.claim_due  # workers call get() only when it is empty
        empty = 0
        waited = 0.0
        claims: list[tuple[float, int]] = []

        async def counted_get() -> Any:
            nonlocal empty, waited
            empty += 1
            t0 = time.monotonic()
            try:
                return await get()
            finally:
                waited += time.monotonic() - t0

        async def timed_claim(*a: Any, **kw: Any) -> Any:
            t0 = time.monotonic()
            got = await claim_due(*a, **kw)
            claims.append((time.monotonic() - t0, len(got)))
            return got

        ready.get = counted_get  # type: ignore[method-assign]
        store.claim_due = timed_claim  # type: ignore[method-assign]
        try:
            run = await measured(seconds, count)
        finally:
            del ready.get, store.claim_due
        gets = max(1, round(run.per_s * seconds))  # one take from the queue per poll
        workers = d.settings.rate_limit.max_concurrency
        took = sorted(t for t, _ in claims) or [0.0]
        print(
            f"  {run.per_s:,.0f} polls/s; gets that found the queue empty"
            f" {empty / max(gets, 1):.1%}, worker time waiting there"
            f" {waited / (workers * seconds):.1%}"
        )
        print(
            f"  {len(claims)} claims of {statistics.mean(n for _, n in claims or [(0, 0)]):.0f}"
            f" on average (queue of {ready.maxsize}); claim took p50"
            f" {took[len(took) // 2] * 1000:.1f} ms, p90 {took[int(len(took) * 0.9)] * 1000:.1f} ms"
        )
        return run

    overhead.measured, inproc.daemon = counting, keeping
    try:
        await overhead.orderwatch_loop(base, seconds)
    finally:
        overhead.measured, inproc.daemon = measured, make_daemon


if __name__ == "__main__":
    diagnostic_main(__doc__, one_round, seconds=6.0, rounds=2)
