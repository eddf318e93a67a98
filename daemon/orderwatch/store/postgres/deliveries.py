"""The shared store's outbox: one delivery per final event and sink, leased to a replica's
delivery worker with `FOR UPDATE SKIP LOCKED`, retried, replayed on request."""

from __future__ import annotations

from collections.abc import Sequence

from orderwatch.store.base import (
    DeadDelivery,
    DeliveryClaim,
    DeliveryRow,
    DeliveryState,
    EventRecord,
)
from orderwatch.store.postgres.connection import PostgresConnection
from orderwatch.store.schema import DELIVERY_STATES


class PostgresDeliveries(PostgresConnection):
    """Claiming, recording, replaying and counting deliveries."""

    async def claim_deliveries(
        self, now: float, limit: int, owner: str, lease_s: float, sinks: Sequence[str]
    ) -> list[DeliveryClaim]:
        claims: list[DeliveryClaim] = []
        for sink in sinks:
            rows = await self._all(
                "WITH due AS (SELECT event_id, next_attempt_at AS due_at FROM deliveries"
                "  WHERE sink = %s AND state = 'pending' AND next_attempt_at <= %s"
                "  ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED)"
                " UPDATE deliveries d SET lease_owner = %s, fence = d.fence + 1,"
                " next_attempt_at = %s FROM due, events e"
                " WHERE d.sink = %s AND d.event_id = due.event_id AND e.event_id = d.event_id"
                " RETURNING d.event_id, d.attempts, d.fence, e.order_id, e.event_type, e.body,"
                " e.created_at, due.due_at",
                sink,
                now,
                limit,
                owner,
                now + lease_s,
                sink,
                what="claim deliveries",
            )
            rows.sort(key=lambda r: (r[7], r[0]))
            claims += [
                DeliveryClaim(EventRecord(r[0], r[3], r[4], bytes(r[5]), r[6]), sink, r[1], r[2])
                for r in rows
            ]
        return claims

    async def next_delivery_due_at(self, sinks: Sequence[str]) -> float | None:
        if not sinks:
            return None
        value = await self._one(
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE state = 'pending'"
            " AND sink = ANY(%s)",
            list(sinks),
        )
        return None if value is None else float(value)

    async def record_delivery(
        self,
        claim: DeliveryClaim,
        now: float,
        state: DeliveryState,
        outcome: str,
        next_attempt_at: float | None,
    ) -> bool:
        changed = await self._write(
            "record delivery",
            "UPDATE deliveries SET state = %s, attempts = attempts + 1, last_outcome = %s,"
            " next_attempt_at = %s, updated_at = %s, lease_owner = NULL"
            " WHERE event_id = %s AND sink = %s AND fence = %s AND state = 'pending'",
            state,
            outcome,
            next_attempt_at,
            now,
            claim.event.event_id,
            claim.sink,
            claim.fence,
        )
        return changed == 1

    async def replay(self, order_ids: Sequence[str], sinks: Sequence[str], now: float) -> int:
        return await self._write(
            "replay",
            "INSERT INTO deliveries(event_id, sink, state, attempts, next_attempt_at,"
            " updated_at) SELECT e.event_id, s, 'pending', 0, %s, %s"
            " FROM events e, unnest(%s::text[]) AS s WHERE e.order_id = ANY(%s)"
            " ON CONFLICT (event_id, sink) DO UPDATE SET state = 'pending', attempts = 0,"
            " next_attempt_at = excluded.next_attempt_at, updated_at = excluded.updated_at,"
            " lease_owner = NULL, fence = deliveries.fence + 1",
            now,
            now,
            list(dict.fromkeys(sinks)),
            list(order_ids),
        )

    async def get_deliveries(self, order_ids: Sequence[str]) -> list[DeliveryRow]:
        rows = await self._all(
            "SELECT d.event_id, e.order_id, d.sink, d.state, d.attempts, d.next_attempt_at,"
            " d.last_outcome FROM deliveries d JOIN events e ON e.event_id = d.event_id"
            " WHERE e.order_id = ANY(%s) ORDER BY e.order_id, d.sink",
            list(order_ids),
        )
        order = {oid: i for i, oid in enumerate(order_ids)}
        rows.sort(key=lambda r: (order.get(r[1], 0), r[2]))
        return [DeliveryRow(*r) for r in rows]

    async def delivery_counts(self) -> dict[str, int]:
        rows = await self._all("SELECT state, COUNT(*) FROM deliveries GROUP BY state")
        return {s: 0 for s in DELIVERY_STATES} | {r[0]: int(r[1]) for r in rows}

    async def shift_retries(self, step: float, now: float) -> int:
        async with self._tx("move retries after a clock step") as conn:
            cur = await conn.execute(
                "UPDATE deliveries SET next_attempt_at = GREATEST(next_attempt_at - %s, %s)"
                " WHERE state = 'pending' AND lease_owner IS NULL AND next_attempt_at > %s",
                (step, now, now),
            )
            return cur.rowcount

    async def pending_deliveries_by_sink(self) -> dict[str, int]:
        rows = await self._all(
            "SELECT sink, COUNT(*) FROM deliveries WHERE state = 'pending' GROUP BY sink"
        )
        return {r[0]: int(r[1]) for r in rows}

    async def dead_deliveries(self, limit: int) -> list[DeadDelivery]:
        rows = await self._all(
            "SELECT d.event_id, e.order_id, d.sink, d.attempts, d.last_outcome, d.updated_at"
            " FROM deliveries d JOIN events e ON e.event_id = d.event_id"
            " WHERE d.state IN ('dead', 'disabled')"
            " ORDER BY d.updated_at DESC, d.event_id, d.sink LIMIT %s",
            limit,
        )
        return [DeadDelivery(*r) for r in rows]
