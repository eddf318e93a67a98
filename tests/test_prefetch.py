"""The poller's prefetch queue: FIFO, workers wait while it is empty, no wake-up is lost."""

from __future__ import annotations

import asyncio

from orderwatch.polling.prefetch import Prefetch


async def test_items_come_out_in_the_order_they_went_in() -> None:
    ready: Prefetch[int] = Prefetch(4)
    for i in range(3):
        ready.put(i)
    assert ready.room() == 1
    assert [await ready.get(), ready.popleft()] == [0, 1]
    assert ready.take_all() == [2]
    assert not ready and ready.room() == 4


async def test_waiting_workers_get_items_as_they_come_each_one_once() -> None:
    ready: Prefetch[int] = Prefetch(8)
    workers = [asyncio.create_task(ready.get()) for _ in range(3)]
    await asyncio.sleep(0)  # all three wait
    for i in range(3):
        ready.put(i)
    got = await asyncio.wait_for(asyncio.gather(*workers), 5)
    assert sorted(got) == [0, 1, 2]


async def test_a_worker_cancelled_after_its_wake_up_passes_it_on() -> None:
    """Woken for an item and cancelled before it ran (a stop): the item must reach another
    waiting worker, not sit in the queue while that one waits forever."""
    ready: Prefetch[str] = Prefetch(8)
    first = asyncio.create_task(ready.get())
    second = asyncio.create_task(ready.get())
    await asyncio.sleep(0)
    ready.put("a")  # wakes `first`...
    first.cancel()  # ...which is cancelled before it runs
    assert await asyncio.wait_for(second, 5) == "a"
    assert first.cancelled()


async def test_a_wake_up_that_finds_the_item_taken_waits_again() -> None:
    """A running worker may take the item a waiting one was woken for; that one then waits
    for the next item instead of failing."""
    ready: Prefetch[str] = Prefetch(8)
    waiting = asyncio.create_task(ready.get())
    await asyncio.sleep(0)
    ready.put("a")
    assert ready.popleft() == "a"  # taken by a worker that did not wait
    await asyncio.sleep(0.01)
    assert not waiting.done()
    ready.put("b")
    assert await asyncio.wait_for(waiting, 5) == "b"
