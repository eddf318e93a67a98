"""A pulse: "something changed", told to whoever waits at that moment, each time.

Parts that change state a caller may want to see (a poll applied, a delivery recorded, a
request served) fire one; a waiter takes `next()` *before* it looks at the state, then waits
for that future, so a change that comes between its look and its wait is not missed. Unlike
an `asyncio.Event` it never stays set, so any number of waiters can use it without clearing
it for one another. Firing costs a counter increment when nobody waits."""

from __future__ import annotations

import asyncio


class Pulse:
    def __init__(self) -> None:
        self.count = 0  # how many times it fired
        self._next: asyncio.Future[None] | None = None

    def __call__(self) -> None:
        """Something changed: wake whoever waits for the next change."""
        self.count += 1
        waiting, self._next = self._next, None
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    def next(self) -> asyncio.Future[None]:
        """A future done at the next change (shared by every waiter until then: await it
        through `asyncio.wait` or `asyncio.shield`, which do not cancel it)."""
        if self._next is None or self._next.done():
            self._next = asyncio.get_running_loop().create_future()
        return self._next
