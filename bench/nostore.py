"""A diagnostic for the overhead benchmark, never used outside it: the daemon with its hot
store calls (add, claim, reschedule, release, next due) answered from an in-memory heap, so
the table can show what the poll loop costs without the SQLite writes. It is not durable and
not a store: finals, deliveries and everything else still go to SQLite."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from orderwatch.store.base import Claim
from orderwatch.store.sqlite import SqliteStore


@contextmanager
def heap_store() -> Iterator[None]:
    due: list[tuple[float, str]] = []
    rows: dict[str, list[Any]] = {}  # id -> [fence, polls, added_at]
    add = SqliteStore.add_orders

    async def add_orders(self: SqliteStore, ids: Iterable[str], now: float, at: float) -> int:
        ids = list(ids)
        for i in ids:
            rows[i] = [0, 0, now]
            heapq.heappush(due, (at, i))
        return await add(self, ids, now, at)

    async def claim_due(
        self: SqliteStore, now: float, limit: int, owner: str, lease_s: float
    ) -> list[Claim]:
        out: list[Claim] = []
        while due and due[0][0] <= now and len(out) < limit:
            at, i = heapq.heappop(due)
            row = rows[i]
            row[0] += 1
            out.append(Claim(i, row[0], at, row[2], row[1], 0, None, lease_until=now + lease_s))
        return out

    def reschedule_nowait(self: SqliteStore, c: Claim, at: float, *, polls: int, **_: Any) -> None:
        rows[c.order_id][1] = polls
        heapq.heappush(due, (at, c.order_id))

    async def reschedule(self: SqliteStore, c: Claim, at: float, **kw: Any) -> bool:
        reschedule_nowait(self, c, at, **kw)
        return True

    async def release(self: SqliteStore, c: Claim, at: float | None = None) -> bool:
        heapq.heappush(due, (c.due_at if at is None else at, c.order_id))
        return True

    async def next_due_at(self: SqliteStore) -> float | None:
        return due[0][0] if due else None

    with mock.patch.multiple(
        SqliteStore,
        add_orders=add_orders,
        claim_due=claim_due,
        reschedule=reschedule,
        reschedule_nowait=reschedule_nowait,
        release=release,
        next_due_at=next_due_at,
    ):
        yield
