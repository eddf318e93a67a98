"""The shared store: one PostgreSQL database for several replicas.

Driver: psycopg 3 (async, with psycopg_pool). Chosen over asyncpg for libpq's standard DSN,
environment and sslmode handling (what operators already configure), binary wheels, and one
driver for sync and async use. Work is shared with `FOR UPDATE SKIP LOCKED` claims that set a
lease (next_poll_at moves to the lease's end) and bump a fencing token; every write acting on a
claim names the token, so a replica that lost its lease (paused, partitioned, killed) writes
nothing. The DSN may hold a password: it never appears in logs or errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from itertools import islice
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from orderwatch.errors import StoreError
from orderwatch.limiter import RateLimiter, SpacedLimiter
from orderwatch.store.base import (
    Claim,
    DeliveryClaim,
    DeliveryRow,
    DeliveryState,
    EventRecord,
    OrderRow,
    OrderState,
)
from orderwatch.store.schema import (
    DELIVERY_STATES,
    ORDER_STATES,
    SCHEMA_VERSION,
    SEED_COUNTS,
    TABLES,
)

_CHUNK = 20_000
LIMITER_DDL = (
    "CREATE TABLE IF NOT EXISTS rate_limiter (name TEXT PRIMARY KEY,"
    " next_slot DOUBLE PRECISION NOT NULL)"
)


class PostgresStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, dsn: str) -> PostgresStore:
        pool = AsyncConnectionPool(
            dsn, min_size=1, max_size=4, open=False, timeout=10, reconnect_timeout=3600
        )
        try:
            await pool.open(wait=True, timeout=10)
        except Exception as e:
            await pool.close()
            raise StoreError(
                f"cannot connect to the PostgreSQL state store ({type(e).__name__})"
            ) from None
        store = cls(pool)
        await store._migrate()
        return store

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        try:
            async with self.pool.connection() as conn, conn.transaction():
                yield conn
        except (psycopg.Error, TimeoutError) as e:
            raise StoreError(f"PostgreSQL state store: {type(e).__name__}: {_safe(e)}") from None
        except Exception as e:  # the pool's own errors (PoolTimeout...)
            if type(e).__module__.startswith("psycopg"):
                raise StoreError(f"PostgreSQL state store: {type(e).__name__}") from None
            raise

    async def _migrate(self) -> None:
        async with self._tx() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(74001)")
            for ddl in (*TABLES, *SEED_COUNTS, LIMITER_DDL):
                await conn.execute(ddl)
            await conn.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', %s)"
                " ON CONFLICT (key) DO NOTHING",
                (str(SCHEMA_VERSION),),
            )

    async def _all(self, sql: str, *args: Any) -> list[Any]:
        async with self._tx() as conn:
            cur = await conn.execute(sql, args)
            return await cur.fetchall()

    async def _one(self, sql: str, *args: Any) -> Any:
        rows = await self._all(sql, *args)
        return rows[0][0] if rows else None

    # -- orders --------------------------------------------------------------------------
    async def add_orders(self, order_ids: Iterable[str], now: float, first_poll_at: float) -> int:
        added = 0
        it = iter(order_ids)
        while chunk := list(islice(it, _CHUNK)):
            async with self._tx() as conn:
                cur = await conn.execute(
                    "INSERT INTO orders(id, state, added_at, next_poll_at)"
                    " SELECT x, 'pending', %s, %s FROM unnest(%s::text[]) AS x"
                    " ON CONFLICT (id) DO NOTHING",
                    (now, first_poll_at, chunk),
                )
                new = cur.rowcount
                await conn.execute(
                    "UPDATE order_counts SET n = n + %s WHERE state = 'pending'", (new,)
                )
            added += new
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
        )
        rows.sort(key=lambda r: (r[2], r[0]))
        return [Claim(r[0], r[1], r[2], r[3], r[4], r[5], r[6], lease_until=until) for r in rows]

    async def next_due_at(self) -> float | None:
        value = await self._one("SELECT MIN(next_poll_at) FROM orders WHERE state = 'pending'")
        return None if value is None else float(value)

    async def reschedule(
        self,
        claim: Claim,
        next_poll_at: float,
        *,
        polls: int,
        error_streak: int,
        first_404_at: float | None,
        last_error: str | None,
        last_body: bytes | None,
    ) -> bool:
        async with self._tx() as conn:
            cur = await conn.execute(
                "UPDATE orders SET next_poll_at = %s, polls = %s, error_streak = %s,"
                " first_404_at = %s, last_error = %s, last_body = COALESCE(%s::bytea, last_body),"
                " lease_owner = NULL WHERE id = %s AND fence = %s AND state = 'pending'",
                (
                    next_poll_at,
                    polls,
                    error_streak,
                    first_404_at,
                    last_error,
                    last_body,
                    claim.order_id,
                    claim.fence,
                ),
            )
            return cur.rowcount == 1

    async def release(self, claim: Claim, next_poll_at: float | None = None) -> bool:
        due = claim.due_at if next_poll_at is None else next_poll_at
        async with self._tx() as conn:
            cur = await conn.execute(
                "UPDATE orders SET next_poll_at = %s, lease_owner = NULL"
                " WHERE id = %s AND fence = %s AND state = 'pending'",
                (due, claim.order_id, claim.fence),
            )
            return cur.rowcount == 1

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
        async with self._tx() as conn:
            cur = await conn.execute(
                "UPDATE orders SET state = %s, final_status = %s, finished_at = %s,"
                " next_poll_at = NULL, lease_owner = NULL, last_error = NULL"
                " WHERE id = %s AND fence = %s AND state = 'pending'",
                (state, final_status, now, claim.order_id, claim.fence),
            )
            if cur.rowcount != 1:
                return False
            await conn.execute(
                "UPDATE order_counts SET n = n + (CASE state WHEN %s THEN 1 ELSE -1 END)"
                " WHERE state IN ('pending', %s)",
                (state, state),
            )
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

    async def last_body(self, order_id: str) -> bytes | None:
        body = await self._one("SELECT last_body FROM orders WHERE id = %s", order_id)
        return bytes(body) if body is not None else None

    async def counts(self) -> dict[str, int]:
        rows = await self._all("SELECT state, n FROM order_counts")
        return {s: 0 for s in ORDER_STATES} | {r[0]: int(r[1]) for r in rows}

    async def oldest_pending_added_at(self) -> float | None:
        value = await self._one("SELECT MIN(added_at) FROM orders WHERE state = 'pending'")
        return None if value is None else float(value)

    async def get_orders(self, order_ids: Sequence[str]) -> list[OrderRow]:
        rows = await self._all(
            "SELECT id, state, added_at, polls, error_streak, next_poll_at, last_error,"
            " final_status, finished_at FROM orders WHERE id = ANY(%s)",
            list(order_ids),
        )
        found = {r[0]: OrderRow(*r) for r in rows}
        return [found[i] for i in order_ids if i in found]

    # -- deliveries ----------------------------------------------------------------------
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
            )
            rows.sort(key=lambda r: r[7])
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
        async with self._tx() as conn:
            cur = await conn.execute(
                "UPDATE deliveries SET state = %s, attempts = attempts + 1, last_outcome = %s,"
                " next_attempt_at = %s, updated_at = %s, lease_owner = NULL"
                " WHERE event_id = %s AND sink = %s AND fence = %s AND state = 'pending'",
                (
                    state,
                    outcome,
                    next_attempt_at,
                    now,
                    claim.event.event_id,
                    claim.sink,
                    claim.fence,
                ),
            )
            return cur.rowcount == 1

    async def replay(self, order_ids: Sequence[str], sinks: Sequence[str], now: float) -> int:
        async with self._tx() as conn:
            cur = await conn.execute(
                "INSERT INTO deliveries(event_id, sink, state, attempts, next_attempt_at,"
                " updated_at) SELECT e.event_id, s, 'pending', 0, %s, %s"
                " FROM events e, unnest(%s::text[]) AS s WHERE e.order_id = ANY(%s)"
                " ON CONFLICT (event_id, sink) DO UPDATE SET state = 'pending', attempts = 0,"
                " next_attempt_at = excluded.next_attempt_at, updated_at = excluded.updated_at,"
                " lease_owner = NULL, fence = deliveries.fence + 1",
                (now, now, list(sinks), list(order_ids)),
            )
            return cur.rowcount

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

    # -- small facts ---------------------------------------------------------------------
    async def get_meta(self, key: str) -> str | None:
        value = await self._one("SELECT value FROM meta WHERE key = %s", key)
        return None if value is None else str(value)

    async def set_meta(self, key: str, value: str) -> None:
        async with self._tx() as conn:
            await conn.execute(
                "INSERT INTO meta(key, value) VALUES (%s, %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # -- cluster-wide rate limit -----------------------------------------------------------
    def limiter(self, rate: float) -> RateLimiter:
        return PostgresLimiter(self, rate)

    # -- lifecycle -----------------------------------------------------------------------
    async def release_owner(self, owner: str, now: float) -> None:
        async with self._tx() as conn:
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

    async def ping(self) -> None:
        await self._one("SELECT 1")

    async def close(self) -> None:
        await self.pool.close()


class PostgresLimiter:
    """Send slots handed out by the database, so the sum of every replica's GETs keeps the
    rate: one row holds the next free slot (database clock); each acquire takes the slot and
    moves it on by (1 + margin) / rate. A restarted replica continues from the stored slot, so
    a restart cannot burst. Replicas sleep until their slot on their own clock, translated with
    half the query's round trip; the margin (5%, wider than a single daemon's 2%) absorbs what
    differs between replicas' wake-ups. A local SpacedLimiter at the full rate is a second
    guard."""

    def __init__(self, store: PostgresStore, rate: float, margin: float = 0.05) -> None:
        self.store = store
        self.interval_s = (1.0 + margin) / rate
        self._local = SpacedLimiter(rate, margin=margin, start_full=False)

    async def acquire(self) -> None:
        sent = time.monotonic()
        async with self.store._tx() as conn:
            cur = await conn.execute(
                "INSERT INTO rate_limiter AS r (name, next_slot)"
                " VALUES ('api', extract(epoch FROM clock_timestamp()) + %s)"
                " ON CONFLICT (name) DO UPDATE SET next_slot ="
                " GREATEST(r.next_slot, extract(epoch FROM clock_timestamp())) + %s"
                " RETURNING next_slot - %s, extract(epoch FROM clock_timestamp())",
                (self.interval_s, self.interval_s, self.interval_s),
            )
            row = await cur.fetchone()
        assert row is not None
        now = time.monotonic()
        # the database read its clock about half a round trip before we got the answer
        wait = float(row[0]) - float(row[1]) - (now - sent) / 2
        if wait > 0:
            await asyncio.sleep(wait)
        await self._local.acquire()


def _safe(e: Exception) -> str:
    """psycopg messages name hosts and users, never passwords; keep the first line only."""
    return str(e).splitlines()[0][:200] if str(e) else ""
