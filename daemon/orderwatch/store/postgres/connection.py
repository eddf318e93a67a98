"""The shared store's connection: the pool (with libpq and session settings that fail fast
and notice a lost network), the schema migration, one-statement helpers, meta and closing.
Every other part of `PostgresStore` builds on this."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Self

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from orderwatch.core.errors import StoreError
from orderwatch.store.base import GOODBYE_S
from orderwatch.store.cluster_limiter import LIMITER_DDL, first_line, pooled
from orderwatch.store.schema import ADDED_COLUMNS, SCHEMA_VERSION, SEED_COUNTS, TABLES

MIGRATION_LOCK = 74001  # pg_advisory_xact_lock key: replicas starting together migrate in turn
META_LOCK = 74002  # with hashtext(key): one update_meta of a key at a time across replicas
POOL_MIN, POOL_MAX = 1, 4
# The pool retries a lost connection after 1, 2, 4, 8... s with no cap, for as long as this:
# after a long outage its next try could come a minute after the server was back. A short
# give-up ends each chain within a few seconds, and the next store call starts a fresh one
# from 1 s.
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


class PostgresConnection:
    """The base every part of `PostgresStore` shares: the pool, and the unawaited writes
    (writes.py starts them, closing waits for them)."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool
        self._queued: set[asyncio.Task[None]] = set()  # reschedule_nowait writes in flight

    @classmethod
    async def open(cls, dsn: str) -> Self:
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
            for table, column, kind in ADDED_COLUMNS:  # ALTER locks the table: only if missing
                cur = await conn.execute(
                    "SELECT 1 FROM information_schema.columns WHERE table_schema ="
                    " current_schema() AND table_name = %s AND column_name = %s",
                    (table, column),
                )
                if await cur.fetchone() is None:
                    await conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
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

    async def update_meta(self, key: str, update: Callable[[str | None], str]) -> str:
        # An advisory lock, not SELECT ... FOR UPDATE: it also covers a key with no row yet.
        async with self._tx("update meta") as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (META_LOCK, key))
            cur = await conn.execute("SELECT value FROM meta WHERE key = %s", (key,))
            row = await cur.fetchone()
            new = update(None if row is None else str(row[0]))
            await conn.execute(
                "INSERT INTO meta(key, value) VALUES (%s, %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, new),
            )
        return new

    # -- lifecycle -----------------------------------------------------------------------
    async def ping(self) -> None:
        await self._one("SELECT 1")

    async def close(self) -> None:
        if self._queued:
            _, late = await asyncio.wait(self._queued, timeout=GOODBYE_S)
            for task in late:  # the server is gone: those orders are polled again, no loss
                task.cancel()
        await self.pool.close(timeout=GOODBYE_S)
