"""What the embedded store answers about orders: counts, the oldest pending, rows for
`status`, an order's last answer and its final event."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from orderwatch.store.base import EventRecord, OrderRow
from orderwatch.store.schema import ORDER_ROW, ORDER_STATES
from orderwatch.store.sqlite.connection import SqliteConnection


def read_event(db: sqlite3.Connection, event_id: str) -> EventRecord:
    """One stored event by its id (on the store's thread)."""
    r = db.execute(
        "SELECT event_id, order_id, event_type, body, created_at FROM events WHERE event_id = ?",
        (event_id,),
    ).fetchone()
    return EventRecord(r[0], r[1], r[2], bytes(r[3]), r[4])


class SqliteReads(SqliteConnection):
    """Read-only questions about orders and their final events."""

    async def counts(self) -> dict[str, int]:
        rows = await self._run(self._all, "SELECT state, n FROM order_counts")
        return {s: 0 for s in ORDER_STATES} | {r[0]: r[1] for r in rows}

    async def oldest_pending_added_at(self) -> float | None:
        return await self._run(
            self._scalar, "SELECT MIN(added_at) FROM orders WHERE state = 'pending'"
        )

    async def get_orders(self, order_ids: Sequence[str]) -> list[OrderRow]:
        return await self._run(self._get_orders, list(order_ids))

    def _get_orders(self, order_ids: list[str]) -> list[OrderRow]:
        found: dict[str, OrderRow] = {}
        for i in range(0, len(order_ids), 500):
            part = order_ids[i : i + 500]
            marks = ",".join("?" * len(part))
            for r in self.db.execute(
                "SELECT id, state, added_at, polls, error_streak, next_poll_at, last_error,"
                f" final_status, finished_at, found_by FROM orders WHERE id IN ({marks})",
                part,
            ):
                found[r[0]] = OrderRow(*r)
        return [found[i] for i in order_ids if i in found]

    async def oldest_pending(self, limit: int) -> list[OrderRow]:
        rows = await self._run(
            self._all,
            f"SELECT {ORDER_ROW} FROM orders WHERE state = 'pending' ORDER BY added_at, id LIMIT ?",
            limit,
        )
        return [OrderRow(*r) for r in rows]

    async def recent_finals(self, limit: int) -> list[OrderRow]:
        rows = await self._run(
            self._all,
            f"SELECT {ORDER_ROW} FROM orders WHERE finished_at IS NOT NULL"
            " ORDER BY finished_at DESC, id LIMIT ?",
            limit,
        )
        return [OrderRow(*r) for r in rows]

    async def last_body(self, order_id: str) -> bytes | None:
        body = await self._run(self._scalar, "SELECT last_body FROM orders WHERE id = ?", order_id)
        return bytes(body) if body is not None else None

    async def get_event(self, order_id: str) -> EventRecord | None:
        return await self._run(self._get_event, order_id)

    def _get_event(self, order_id: str) -> EventRecord | None:
        r = self.db.execute(
            "SELECT event_id FROM events WHERE order_id = ? LIMIT 1", (order_id,)
        ).fetchone()
        return read_event(self.db, r[0]) if r else None
