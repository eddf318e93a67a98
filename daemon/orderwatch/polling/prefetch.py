"""The poller's prefetch queue: claimed orders waiting for a worker, oldest first."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Prefetch(deque[T]):
    """A FIFO of at most `maxsize` items that workers take from, waiting while it is empty,
    and that one producer fills without waiting (it checks `room()` first).

    asyncio.Queue does this too, with task accounting and blocked producers the poller never
    uses, at a price paid on every poll: taking an item that is there is a `popleft()` here (a
    deque: workers write `ready.popleft() if ready else await ready.get()`), and ten Python
    calls there (get, get_nowait, _get, qsize, empty, _wakeup_next...); adding one is one call
    against six. Python calls are what the poll loop's overhead is made of (bench/overhead)."""

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize
        self._getters: deque[asyncio.Future[None]] = deque()

    def room(self) -> int:
        return self.maxsize - len(self)

    def put(self, item: T) -> None:
        """Add one item (the caller made sure there is room) and wake one waiting worker."""
        self.append(item)
        if self._getters:  # nearly always none: workers take what is there without waiting
            self._wake_one()

    def put_at(self, index: int, item: T) -> None:
        """`put`, at `index` from the front (a pushed order goes ahead of the queue)."""
        self.insert(index, item)
        if self._getters:
            self._wake_one()

    def take_if(self, wanted: Callable[[T], bool]) -> list[T]:
        """Remove the items `wanted` picks; they are returned, oldest first."""
        taken = [item for item in self if wanted(item)]
        for item in taken:
            self.remove(item)
        return taken

    async def get(self) -> T:
        """The oldest item, once there is one."""
        while not self:
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()  # in case it is not done yet
                if getter in self._getters:
                    self._getters.remove(getter)
                if self and not getter.cancelled():
                    self._wake_one()  # it was woken for an item it will not take: pass it on
                raise
        return self.popleft()

    def take_all(self) -> list[T]:
        """Empty it; what it held, oldest first."""
        items = list(self)
        self.clear()
        return items

    def _wake_one(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return
