"""Orders in and out of the shared store: adding them, leasing the due ones with
`FOR UPDATE SKIP LOCKED` (claims), checking a lease, finishing an order, handing leases back."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import islice

from orderwatch.store.base import EXPEDITED_AT, Claim, EventRecord, OrderState, finish_params
from orderwatch.store.postgres.connection import PostgresConnection

_CHUNK = 20_000


class PostgresClaims(PostgresConnection):
    """Adding, claiming, finishing and releasing orders."""

    async def add_orders(self, order_ids: Iterable[str], now: float, first_poll_at: float) -> int:
        added = 0
        it = iter(order_ids)
        while chunk := list(islice(it, _CHUNK)):
            # Sorted: two replicas adding the same IDs lock them in the same order (no deadlock).
            rows = await self._all(
                "WITH ins AS (INSERT INTO orders(id, state, added_at, next_poll_at)"
                "  SELECT x, 'pending', %s, %s FROM unnest(%s::text[]) AS x"
                "  ON CONFLICT (id) DO NOTHING RETURNING 1)"
                " UPDATE order_counts SET n = n + (SELECT COUNT(*) FROM ins)"
                " WHERE state = 'pending' RETURNING (SELECT COUNT(*) FROM ins)",
                now,
                first_poll_at,
                sorted(set(chunk)),
                what="add orders",
            )
            added += int(rows[0][0]) if rows else 0
        return added

    async def claim_due(self, now: float, limit: int, owner: str, lease_s: float) -> list[Claim]:
        until = now + lease_s
        rows = await self._all(
            "WITH due AS (SELECT id, next_poll_at AS due_at FROM orders"
            "  WHERE state = 'pending' AND next_poll_at <= %s"
            "  ORDER BY next_poll_at LIMIT %s FOR UPDATE SKIP LOCKED)"
            " UPDATE orders o SET lease_owner = %s, fence = o.fence + 1, next_poll_at = %s"
            " FROM due WHERE o.id = due.id"
            " RETURNING o.id, o.fence, due.due_at, o.added_at, o.polls, o.error_streak,"
            " o.first_404_at",
            now,
            limit,
            owner,
            until,
            what="claim orders",
        )
        rows.sort(key=lambda r: (r[2], r[0]))
        return [Claim(r[0], r[1], r[2], r[3], r[4], r[5], r[6], lease_until=until) for r in rows]

    async def next_due_at(self) -> float | None:
        value = await self._one("SELECT MIN(next_poll_at) FROM orders WHERE state = 'pending'")
        return None if value is None else float(value)

    async def expedite(
        self, order_ids: Sequence[str], by: str = "push"
    ) -> tuple[list[str], list[str]]:
        expedited: list[str] = []
        leased: list[str] = []
        it = iter(order_ids)
        while chunk := sorted(set(islice(it, _CHUNK))):
            rows = await self._all(
                "WITH hit AS (SELECT id, lease_owner IS NOT NULL AS leased FROM orders"
                "  WHERE state = 'pending' AND id = ANY(%s::text[]) FOR UPDATE),"
                " upd AS (UPDATE orders o SET found_by = %s, next_poll_at = CASE WHEN hit.leased"
                "  THEN o.next_poll_at ELSE %s END FROM hit WHERE o.id = hit.id RETURNING o.id)"
                " SELECT id, leased FROM hit",
                chunk,
                by,
                EXPEDITED_AT,
                what="expedite orders",
            )
            for order_id, is_leased in rows:
                (leased if is_leased else expedited).append(order_id)
        return expedited, leased

    async def holds(self, claim: Claim) -> bool:
        fence = await self._one(
            "SELECT fence FROM orders WHERE id = %s AND state = 'pending'", claim.order_id
        )
        return bool(fence == claim.fence)

    async def finish(
        self,
        claim: Claim,
        state: OrderState,
        final_status: str,
        event: EventRecord,
        sinks: Sequence[str],
    ) -> bool:
        now = event.created_at
        async with self._tx("finish") as conn:
            cur = await conn.execute(
                "UPDATE orders SET state = %s, final_status = %s, finished_at = %s,"
                " next_poll_at = NULL, lease_owner = NULL, last_error = NULL,"
                " polls = %s, error_streak = %s, first_404_at = %s,"
                " found_by = CASE WHEN %s THEN found_by ELSE 'poll' END"
                " WHERE id = %s AND fence = %s AND state = 'pending'",
                finish_params(claim, state, final_status, now),
            )
            if cur.rowcount != 1:
                return False
            # Count rows are locked in one fixed order (pending first) by every writer.
            await conn.execute("UPDATE order_counts SET n = n - 1 WHERE state = 'pending'")
            await conn.execute("UPDATE order_counts SET n = n + 1 WHERE state = %s", (state,))
            await conn.execute(
                "INSERT INTO events(event_id, order_id, event_type, body, created_at)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
                (event.event_id, event.order_id, event.event_type, event.body, now),
            )
            if sinks:
                await conn.execute(
                    "INSERT INTO deliveries(event_id, sink, state, next_attempt_at, updated_at)"
                    " SELECT %s, s, 'pending', %s, %s FROM unnest(%s::text[]) AS s"
                    " ON CONFLICT (event_id, sink) DO NOTHING",
                    (event.event_id, now, now, list(sinks)),
                )
            return True

    async def pull_forward(self, beyond: float, to: float) -> int:
        async with self._tx("pull schedules forward") as conn:
            cur = await conn.execute(
                "UPDATE orders SET next_poll_at = %s WHERE state = 'pending' AND next_poll_at > %s",
                (to, beyond),
            )
            return cur.rowcount

    async def release_owner(self, owner: str, now: float) -> None:
        async with self._tx("release leases") as conn:
            await conn.execute(
                "UPDATE orders SET lease_owner = NULL, next_poll_at = LEAST(next_poll_at, %s)"
                " WHERE lease_owner = %s AND state = 'pending'",
                (now, owner),
            )
            await conn.execute(
                "UPDATE deliveries SET lease_owner = NULL,"
                " next_attempt_at = LEAST(next_attempt_at, %s)"
                " WHERE lease_owner = %s AND state = 'pending'",
                (now, owner),
            )
