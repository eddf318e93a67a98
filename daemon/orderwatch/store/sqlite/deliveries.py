"""The embedded store's outbox: one delivery per final event and sink, leased to the
delivery worker like orders are to pollers, retried, replayed on request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orderwatch.store.base import DeadDelivery, DeliveryClaim, DeliveryRow, DeliveryState
from orderwatch.store.schema import DELIVERY_STATES
from orderwatch.store.sqlite.connection import SqliteConnection
from orderwatch.store.sqlite.reads import read_event


class SqliteDeliveries(SqliteConnection):
    """Claiming, recording, replaying and counting deliveries."""

    async def claim_deliveries(
        self, now: float, limit: int, owner: str, lease_s: float, sinks: Sequence[str]
    ) -> list[DeliveryClaim]:
        return await self._run(self._claim_deliveries, now, limit, owner, lease_s, list(sinks))

    def _claim_deliveries(
        self, now: float, limit: int, owner: str, lease_s: float, sinks: list[str]
    ) -> list[DeliveryClaim]:
        claims: list[DeliveryClaim] = []
        with self._tx():
            for sink in sinks:
                rows = self.db.execute(
                    "UPDATE deliveries SET lease_owner = ?, fence = fence + 1,"
                    " next_attempt_at = ?"
                    " WHERE sink = ? AND event_id IN (SELECT event_id FROM deliveries"
                    "   WHERE sink = ? AND state = 'pending' AND next_attempt_at <= ?"
                    "   ORDER BY next_attempt_at LIMIT ?)"
                    " RETURNING event_id, attempts, fence",
                    (owner, now + lease_s, sink, sink, now, limit),
                ).fetchall()
                for event_id, attempts, fence in rows:
                    claims.append(
                        DeliveryClaim(read_event(self.db, event_id), sink, attempts, fence)
                    )
        return claims

    async def next_delivery_due_at(self, sinks: Sequence[str]) -> float | None:
        if not sinks:
            return None
        marks = ",".join("?" * len(sinks))
        return await self._run(
            self._scalar,
            "SELECT MIN(next_attempt_at) FROM deliveries"
            f" WHERE state = 'pending' AND sink IN ({marks})",
            *sinks,
        )

    async def record_delivery(
        self,
        claim: DeliveryClaim,
        now: float,
        state: DeliveryState,
        outcome: str,
        next_attempt_at: float | None,
    ) -> bool:
        args = (state, outcome, next_attempt_at, now, claim.event.event_id, claim.sink, claim.fence)
        return await self._run(self._record_delivery, args)

    def _record_delivery(self, args: tuple[Any, ...]) -> bool:
        with self._tx():
            cur = self.db.execute(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, last_outcome = ?,"
                " next_attempt_at = ?, updated_at = ?, lease_owner = NULL"
                " WHERE event_id = ? AND sink = ? AND fence = ? AND state = 'pending'",
                args,
            )
        return cur.rowcount == 1

    async def replay(self, order_ids: Sequence[str], sinks: Sequence[str], now: float) -> int:
        return await self._run(self._replay, list(order_ids), list(sinks), now)

    def _replay(self, order_ids: list[str], sinks: list[str], now: float) -> int:
        queued = 0
        with self._tx(durable=True):
            for oid in order_ids:
                for (event_id,) in self.db.execute(
                    "SELECT event_id FROM events WHERE order_id = ?", (oid,)
                ).fetchall():
                    for sink in sinks:
                        self.db.execute(
                            "INSERT INTO deliveries(event_id, sink, state, attempts,"
                            " next_attempt_at, updated_at) VALUES (?, ?, 'pending', 0, ?, ?)"
                            " ON CONFLICT(event_id, sink) DO UPDATE SET state = 'pending',"
                            " attempts = 0, next_attempt_at = excluded.next_attempt_at,"
                            " updated_at = excluded.updated_at, lease_owner = NULL,"
                            " fence = deliveries.fence + 1",
                            (event_id, sink, now, now),
                        )
                        queued += 1
        return queued

    async def get_deliveries(self, order_ids: Sequence[str]) -> list[DeliveryRow]:
        return await self._run(self._get_deliveries, list(order_ids))

    def _get_deliveries(self, order_ids: list[str]) -> list[DeliveryRow]:
        out: list[DeliveryRow] = []
        for oid in order_ids:
            out.extend(
                DeliveryRow(*r)
                for r in self.db.execute(
                    "SELECT d.event_id, e.order_id, d.sink, d.state, d.attempts,"
                    " d.next_attempt_at, d.last_outcome FROM deliveries d"
                    " JOIN events e ON e.event_id = d.event_id WHERE e.order_id = ?"
                    " ORDER BY d.sink",
                    (oid,),
                )
            )
        return out

    async def delivery_counts(self) -> dict[str, int]:
        rows = await self._run(self._all, "SELECT state, COUNT(*) FROM deliveries GROUP BY state")
        return {s: 0 for s in DELIVERY_STATES} | {r[0]: r[1] for r in rows}

    async def shift_retries(self, step: float, now: float) -> int:
        return await self._run(self._shift_retries, step, now)

    def _shift_retries(self, step: float, now: float) -> int:
        with self._tx():
            cur = self.db.execute(
                "UPDATE deliveries SET next_attempt_at = MAX(next_attempt_at - ?, ?)"
                " WHERE state = 'pending' AND lease_owner IS NULL AND next_attempt_at > ?",
                (step, now, now),
            )
        return cur.rowcount

    async def pending_deliveries_by_sink(self) -> dict[str, int]:
        rows = await self._run(
            self._all, "SELECT sink, COUNT(*) FROM deliveries WHERE state = 'pending' GROUP BY sink"
        )
        return {r[0]: r[1] for r in rows}

    async def dead_deliveries(self, limit: int) -> list[DeadDelivery]:
        rows = await self._run(
            self._all,
            "SELECT d.event_id, e.order_id, d.sink, d.attempts, d.last_outcome, d.updated_at"
            " FROM deliveries d JOIN events e ON e.event_id = d.event_id"
            " WHERE d.state IN ('dead', 'disabled')"
            " ORDER BY d.updated_at DESC, d.event_id, d.sink LIMIT ?",
            limit,
        )
        return [DeadDelivery(*r) for r in rows]
