"""Small asyncio helpers the loops share."""

from __future__ import annotations

import asyncio


async def wait_any(*events: asyncio.Event, timeout: float | None) -> bool:  # noqa: ASYNC109 (a deadline is what it waits for, not a cancel)
    """Wait until any event is set or the timeout passes. True if an event was set."""
    if any(e.is_set() for e in events):
        await asyncio.sleep(0)  # always yield once: a caller looping on a set event must not spin
        return True
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when="FIRST_COMPLETED")
    finally:
        for w in waiters:
            w.cancel()
    return bool(done)
