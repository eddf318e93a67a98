"""Small asyncio helpers the loops share, and the event loop the commands run on."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on uvloop where it is installed: the same asyncio API with the loop and
    its transports in C, which takes about a quarter off the daemon's CPU per poll
    (docs/performance.md). Without it (an unsupported platform), the standard loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


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


async def until_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, None]) -> None:
    """Run `work` until it returns or `stop` is set; then cancel it. For loops whose every
    pass ends with a look at `stop`, but whose store call may first wait out a timeout (a
    database that is down): a stop need not wait for that."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait([task])
    if not task.cancelled():
        task.result()  # its own error, if it raised one
