"""What the shared store answers about orders: counts, the oldest pending, rows for
`status`, an order's last answer and its final event."""

from __future__ import annotations

from collections.abc import Sequence

from orderwatch.store.base import EventRecord, OrderRow
from orderwatch.store.postgres.connection import PostgresConnection
from orderwatch.store.schema import ORDER_ROW, ORDER_STATES


class PostgresReads(PostgresConnection):
    """Read-only questions about orders and their final events."""

    async def counts(self) -> dict[str, int]:
        rows = await self._all("SELECT state, n FROM order_counts")
        return {s: 0 for s in ORDER_STATES} | {r[0]: int(r[1]) for r in rows}

    async def oldest_pending_added_at(self) -> float | None:
        value = await self._one("SELECT MIN(added_at) FROM orders WHERE state = 'pending'")
        return None if value is None else float(value)

    async def get_orders(self, order_ids: Sequence[str]) -> list[OrderRow]:
        rows = await self._all(
            "SELECT id, state, added_at, polls, error_streak, next_poll_at, last_error,"
            " final_status, finished_at, found_by FROM orders WHERE id = ANY(%s)",
            list(order_ids),
        )
        found = {r[0]: OrderRow(*r) for r in rows}
        return [found[i] for i in order_ids if i in found]

    async def oldest_pending(self, limit: int) -> list[OrderRow]:
        rows = await self._all(
            f"SELECT {ORDER_ROW} FROM orders WHERE state = 'pending'"
            " ORDER BY added_at, id LIMIT %s",
            limit,
        )
        return [OrderRow(*r) for r in rows]

    async def recent_finals(self, limit: int) -> list[OrderRow]:
        rows = await self._all(
            f"SELECT {ORDER_ROW} FROM orders WHERE finished_at IS NOT NULL"
            " ORDER BY finished_at DESC, id LIMIT %s",
            limit,
        )
        return [OrderRow(*r) for r in rows]

    async def last_body(self, order_id: str) -> bytes | None:
        body = await self._one("SELECT last_body FROM orders WHERE id = %s", order_id)
        return bytes(body) if body is not None else None

    async def get_event(self, order_id: str) -> EventRecord | None:
        rows = await self._all(
            "SELECT event_id, order_id, event_type, body, created_at FROM events"
            " WHERE order_id = %s LIMIT 1",
            order_id,
        )
        if not rows:
            return None
        r = rows[0]
        return EventRecord(r[0], r[1], r[2], bytes(r[3]), r[4])
