"""The shared store: one PostgreSQL database for several replicas.

Driver: psycopg 3 (async, with psycopg_pool), chosen over asyncpg for libpq's standard DSN,
`PG*` environment and `sslmode`/certificate handling (what operators already configure),
`psycopg[binary]` wheels with no compiler, and one driver for sync and async use (the tests and
tools use the sync API on the same DSN).

Work is shared with `FOR UPDATE SKIP LOCKED` claims that set a lease (next_poll_at moves to the
lease's end: a visibility timeout) and bump a fencing token; every write acting on a claim names
the token, so a replica that lost its lease (paused, partitioned, killed) writes nothing. The
semantics are the SQLite store's, statement for statement. The DSN may hold a password: it never
appears in logs or errors. A lost connection costs one failed call (StoreError); the pool
reconnects and the daemon retries on its next pass."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from itertools import islice
from typing import Any

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from orderwatch.core.errors import StoreError
from orderwatch.core.rate_limit import RateLimiter
from orderwatch.store.base import (
    GOODBYE_S,
    Claim,
    DeliveryClaim,
    DeliveryRow,
    DeliveryState,
    EventRecord,
    OrderRow,
    OrderState,
    finish_params,
)
from orderwatch.store.cluster_limiter import LIMITER_DDL, PostgresLimiter, first_line, pooled
from orderwatch.store.schema import (
    DELIVERY_STATES,
    ORDER_STATES,
    SCHEMA_VERSION,
    SEED_COUNTS,
    TABLES,
)

log = structlog.get_logger("orderwatch.store")
_CHUNK = 20_000
MIGRATION_LOCK = 74001  # pg_advisory_xact_lock key: replicas starting together migrate in turn
POOL_MIN, POOL_MAX = 1, 4
# The pool retries a lost connection after 1, 2, 4, 8... s with no cap, for as long as this:
# after a long outage its next try could come a minute after the server was back. A short
# give-up ends each chain within a few seconds, and the next store call starts a fresh one
# from 1 s (an outage of 35 s: back 24 s after the server, then under 8 s; a test).
RECONNECT_GIVE_UP_S = 10.0

# libpq settings the DSN (or the PG* variable named) may override: fail fast on a dead host,
# notice a silent network loss in seconds instead of the kernel's two hours.
_CLIENT_DEFAULTS = {
    "connect_timeout": ("PGCONNECT_TIMEOUT", "5"),
    "application_name": ("PGAPPNAME", "orderwatch"),
    "keepalives_idle": (None, "10"),
    "keepalives_interval": (None, "5"),
    "keepalives_count": (None, "3"),
    "tcp_user_timeout": (None, "20000"),
}
# Per session, on the server: a replica cut off in the middle of a transaction must not hold
# row locks (order counts, the limiter row) that every other replica waits for.
_SESSION = (
    "SELECT set_config('idle_in_transaction_session_timeout', '30s', false),"
    " set_config('statement_timeout', '30s', false),"
    " set_config('tcp_keepalives_idle', '10', false),"
    " set_config('tcp_keepalives_interval', '5', false),"
    " set_config('tcp_keepalives_count', '3', false)"
)


def _connect_kwargs(dsn: str, environ: Mapping[str, str]) -> dict[str, Any]:
    try:
        given = conninfo_to_dict(dsn)
    except psycopg.Error:
        raise StoreError("state_dsn is not a valid PostgreSQL connection string") from None
    kwargs: dict[str, Any] = {"autocommit": True}  # one statement, one round trip
    for key, (env, value) in _CLIENT_DEFAULTS.items():
        if key not in given and (env is None or env not in environ):
            kwargs[key] = value
    return kwargs


async def _probe(dsn: str, kwargs: dict[str, Any]) -> None:
    """Connect once, directly; on failure raise StoreError with libpq's reason (host, port,
    user, "password authentication failed"...) minus anything from the DSN that is secret."""
    try:
        conn = await psycopg.AsyncConnection.connect(dsn, **kwargs)
    except psycopg.Error as e:
        reason = first_line(e)
        password = conninfo_to_dict(dsn).get("password")
        for secret in (dsn, password):
            if secret:
                reason = reason.replace(str(secret), "***")
        raise StoreError(f"cannot connect to the PostgreSQL state store: {reason}") from None
    await conn.close()


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute(_SESSION)


class PostgresStore:
    """Store over one PostgreSQL database. Open with `await PostgresStore.open(dsn)`."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool
        self._queued: set[asyncio.Task[None]] = set()  # reschedule_nowait writes in flight

    @classmethod
    async def open(cls, dsn: str) -> PostgresStore:
        """Connect, then create or migrate the schema (safe with replicas starting together).
        Raises StoreError, never naming the DSN."""
        kwargs = _connect_kwargs(dsn, os.environ)
        await _probe(dsn, kwargs)  # one clear error now, not a pool retrying for seconds
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            dsn,
            kwargs=kwargs,
            min_size=POOL_MIN,
            max_size=POOL_MAX,
            open=False,
            timeout=10,
            configure=_configure,
            reconnect_timeout=RECONNECT_GIVE_UP_S,
            name="orderwatch",
        )
        try:
            await pool.open(wait=True, timeout=10)
        except Exception as e:
            await pool.close()
            raise StoreError(
                f"cannot connect to the PostgreSQL state store ({type(e).__name__})"
            ) from None
        store = cls(pool)
        try:
            await store._migrate()
        except BaseException:
            await pool.close()
            raise
        return store

    @asynccontextmanager
    async def _conn(self, what: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection (autocommit) for one statement."""
        async with pooled(self.pool, what) as conn:
            yield conn

    @asynccontextmanager
    async def _tx(self, what: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection inside one transaction (committed when the block ends)."""
        async with pooled(self.pool, what) as conn, conn.transaction():
            yield conn

    async def _migrate(self) -> None:
        """Under a transaction-scoped advisory lock, so replicas starting together take turns:
        refuse a schema newer than ours, create what is missing, record the version. (A
        version 2 adds its steps here, keyed on the version found.)"""
        async with self._tx("create schema") as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            found = await self._schema_version(conn)
            if found is not None and found > SCHEMA_VERSION:
                raise StoreError(
                    f"the PostgreSQL state store has schema version {found}, newer than this"
                    f" orderwatch understands ({SCHEMA_VERSION}): upgrade orderwatch"
                )
            for ddl in (*TABLES, *SEED_COUNTS, LIMITER_DDL):
                await conn.execute(ddl)
            await conn.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', %s)"
                " ON CONFLICT (key) DO NOTHING",
                (str(SCHEMA_VERSION),),
            )

    @staticmethod
    async def _schema_version(conn: psycopg.AsyncConnection[Any]) -> int | None:
        cur = await conn.execute("SELECT to_regclass('meta') IS NOT NULL")
        row = await cur.fetchone()
        if not (row and row[0]):
            return None
        cur = await conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
        row = await cur.fetchone()
        return int(row[0]) if row else None

    async def _all(self, sql: str, *args: Any, what: str = "read") -> list[Any]:
        async with self._conn(what) as conn:
            cur = await conn.execute(sql, args)
            return await cur.fetchall()

    async def _one(self, sql: str, *args: Any) -> Any:
        rows = await self._all(sql, *args)
        return rows[0][0] if rows else None

    async def _write(self, what: str, sql: str, *args: Any) -> int:
        """One statement in its own (implicit) transaction; returns the rows it changed."""
        async with self._conn(what) as conn:
            cur = await conn.execute(sql, args)
            return cur.rowcount

    # -- orders --------------------------------------------------------------------------
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
        changed = await self._write(
            "reschedule",
            "UPDATE orders SET next_poll_at = %s, polls = %s, error_streak = %s,"
            " first_404_at = %s, last_error = %s, last_body = COALESCE(%s::bytea, last_body),"
            " lease_owner = NULL WHERE id = %s AND fence = %s AND state = 'pending'",
            next_poll_at,
            polls,
            error_streak,
            first_404_at,
            last_error,
            last_body,
            claim.order_id,
            claim.fence,
        )
        return changed == 1

    def reschedule_nowait(
        self,
        claim: Claim,
        next_poll_at: float,
        *,
        polls: int,
        error_streak: int,
        first_404_at: float | None,
        last_error: str | None,
        last_body: bytes | None,
    ) -> None:
        write = self.reschedule(
            claim,
            next_poll_at,
            polls=polls,
            error_streak=error_streak,
            first_404_at=first_404_at,
            last_error=last_error,
            last_body=last_body,
        )
        task = asyncio.create_task(self._logged(write, claim.order_id))
        self._queued.add(task)
        task.add_done_callback(self._queued.discard)

    async def _logged(self, write: Awaitable[bool], order_id: str) -> None:
        try:
            await write
        except StoreError as e:
            log.error("store.write_failed", order_id=order_id, error=str(e))

    async def flush(self) -> None:
        if self._queued:
            await asyncio.gather(*self._queued, return_exceptions=True)

    async def release(self, claim: Claim, next_poll_at: float | None = None) -> bool:
        due = claim.due_at if next_poll_at is None else next_poll_at
        changed = await self._write(
            "release",
            "UPDATE orders SET next_poll_at = %s, lease_owner = NULL"
            " WHERE id = %s AND fence = %s AND state = 'pending'",
            due,
            claim.order_id,
            claim.fence,
        )
        return changed == 1

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
                " polls = %s, error_streak = %s, first_404_at = %s"
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

    async def pull_forward(self, beyond: float, to: float) -> int:
        async with self._tx("pull schedules forward") as conn:
            cur = await conn.execute(
                "UPDATE orders SET next_poll_at = %s WHERE state = 'pending' AND next_poll_at > %s",
                (to, beyond),
            )
            return cur.rowcount

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
        await self._write(
            "set meta",
            "INSERT INTO meta(key, value) VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            key,
            value,
        )

    # -- cluster-wide rate limit -----------------------------------------------------------
    def shared_limiter(self, rate: float) -> RateLimiter | None:
        """The limiter every replica shares (the daemon uses it instead of a local one)."""
        return PostgresLimiter(self.pool, rate)

    # -- lifecycle -----------------------------------------------------------------------
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

    async def ping(self) -> None:
        await self._one("SELECT 1")

    async def close(self) -> None:
        if self._queued:
            _, late = await asyncio.wait(self._queued, timeout=GOODBYE_S)
            for task in late:  # the server is gone: those orders are polled again, no loss
                task.cancel()
        await self.pool.close(timeout=GOODBYE_S)
