"""The small asyncio helpers the loops share."""

from __future__ import annotations

import asyncio

import pytest

from orderwatch.core.aio import until_stopped


async def test_until_stopped_cancels_the_work_at_the_stop() -> None:
    """A loop stuck in a call that waits out a timeout (a database that is down) is cancelled
    when the stop comes, not waited for."""
    stop = asyncio.Event()
    cancelled = asyncio.Event()

    async def stuck() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    loop = asyncio.get_running_loop()
    loop.call_later(0.05, stop.set)
    await asyncio.wait_for(until_stopped(stop, stuck()), 5)
    assert cancelled.is_set()


async def test_until_stopped_returns_with_the_work_and_raises_its_error() -> None:
    stop = asyncio.Event()

    async def done() -> None:
        await asyncio.sleep(0)

    async def broken() -> None:
        raise RuntimeError("a bug in the loop")

    await until_stopped(stop, done())
    with pytest.raises(RuntimeError, match="a bug in the loop"):
        await until_stopped(stop, broken())


async def test_until_stopped_passes_on_its_own_cancellation() -> None:
    """Cancelled from outside (the task group failing), it cancels the work too."""
    stop = asyncio.Event()
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    outer = asyncio.create_task(until_stopped(stop, work()))
    await started.wait()
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert cancelled.is_set()
