"""The embedded store's connection: its one thread, opening the file, transactions, recovery
after a crash, the meta table, and closing. Every other part of `SqliteStore` builds on this."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self, TypeVar

import structlog

from orderwatch.core.errors import StoreError
from orderwatch.store.base import GOODBYE_S
from orderwatch.store.lock import prepare_state_dir
from orderwatch.store.schema import ADDED_COLUMNS, SCHEMA_VERSION, SEED_COUNTS, TABLES

T = TypeVar("T")
DB_NAME = "orderwatch.sqlite3"
log = structlog.get_logger("orderwatch.store")


def _refuse_newer(db: sqlite3.Connection) -> None:
    """A file written by a newer orderwatch (a downgrade) is not written with this schema."""
    has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone()
    if not has_meta:
        return
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is not None and int(row[0]) > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"schema version {row[0]} is newer than this orderwatch understands"
            f" ({SCHEMA_VERSION}): upgrade orderwatch"
        )


def _has_json(db: sqlite3.Connection) -> bool:
    try:
        db.execute("SELECT json_array(1)")
    except sqlite3.OperationalError:
        return False
    return True


class SqliteConnection(ABC):
    """The base every part of `SqliteStore` shares: the file, its thread and connection, and
    the write queues that claims (claims.py) carry and closing cancels (writes.py fills them)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="orderwatch-sqlite")
        self._db: sqlite3.Connection | None = None
        self._group: list[tuple[str, tuple[Any, ...], asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._queued: list[tuple[Any, ...]] = []  # reschedule_nowait's writes, not yet sent
        self._queued_writer: asyncio.Task[None] | None = None
        self._write_now = asyncio.Event()
        self._last_batch = 0  # how many queued writes the last one carried
        self.one_statement = False  # hot writes as one statement (set at open; see _RESCHEDULE_ALL)

    @classmethod
    async def open(cls, state_dir: Path, *, daemon: bool = False, now: float = 0.0) -> Self:
        """Open (creating if needed). `daemon=True` also frees leases a crash left behind:
        only call it while holding the DaemonLock."""
        prepare_state_dir(state_dir)
        store = cls(state_dir / DB_NAME)
        await store._run(store._connect)
        if daemon:
            await store._run(store._recover, now)
        return store

    # -- what the write batching (writes.py) provides --------------------------------------
    @abstractmethod
    def _write_queued_rows(self, rows: list[tuple[Any, ...]]) -> None:
        """Write queued reschedules (on the store's thread)."""

    @abstractmethod
    async def flush(self) -> None:
        """Wait until every write handed over so far is committed (or failed)."""

    # -- plumbing ------------------------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn, *args)
        except sqlite3.Error as e:
            raise StoreError(f"state database {self.path}: {e}") from e

    def _connect(self) -> None:
        old_umask = os.umask(0o077)  # the db, -wal and -shm files hold payout links
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        finally:
            os.umask(old_umask)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=10000")
        self.one_statement = sqlite3.sqlite_version_info >= (3, 33, 0) and _has_json(db)
        with self._tx(db):
            _refuse_newer(db)
            for ddl in (*TABLES, *SEED_COUNTS):
                db.execute(ddl)
            for table, column, kind in ADDED_COLUMNS:
                if column not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        self._db = db

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "store is closed"
        return self._db

    # -- seams for tests and benchmarks (SQLite only: not part of the Store protocol) -----
    @contextlib.contextmanager
    def connection_replaced(self, db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """Every call runs on `db` until the block ends, then on the store's own connection
        again (which this yields): a closed one fails every call as a lost disk does, a
        wrapper can act between two statements."""
        own = self.db
        self._db = db
        try:
            yield own
        finally:
            self._db = own

    async def trace(self, callback: Callable[[str], object] | None) -> None:
        """Hand every statement the connection runs to `callback` from now on (None: stop)."""
        await self._run(self.db.set_trace_callback, callback)

    @contextlib.contextmanager
    def _tx(self, db: sqlite3.Connection | None = None, durable: bool = False) -> Iterator[None]:
        """One write transaction; `durable` fsyncs the WAL at commit (accepted orders, finals)."""
        db = db or self.db
        if durable:
            db.execute("PRAGMA synchronous=FULL")
        try:
            db.execute("BEGIN IMMEDIATE")  # inside: a BEGIN that fails must restore NORMAL too
            try:
                yield
                db.execute("COMMIT")
            except BaseException:
                # SQLite rolls back by itself on some errors (SQLITE_FULL, I/O errors); a
                # second ROLLBACK would fail and its error would hide the real one.
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        finally:
            if durable:
                db.execute("PRAGMA synchronous=NORMAL")

    def _recover(self, now: float) -> None:
        with self._tx():
            self.db.execute(
                "UPDATE orders SET lease_owner = NULL, next_poll_at = MIN(next_poll_at, ?)"
                " WHERE lease_owner IS NOT NULL AND state = 'pending'",
                (now,),
            )
            self.db.execute(
                "UPDATE deliveries SET lease_owner = NULL,"
                " next_attempt_at = MIN(next_attempt_at, ?)"
                " WHERE lease_owner IS NOT NULL AND state = 'pending'",
                (now,),
            )

    def _scalar(self, sql: str, *args: Any) -> Any:
        row = self.db.execute(sql, args).fetchone()
        return row[0] if row else None

    def _all(self, sql: str, *args: Any) -> list[Any]:
        return self.db.execute(sql, args).fetchall()

    # -- small facts ---------------------------------------------------------------------
    async def get_meta(self, key: str) -> str | None:
        value = await self._run(self._scalar, "SELECT value FROM meta WHERE key = ?", key)
        return None if value is None else str(value)

    async def set_meta(self, key: str, value: str) -> None:
        await self._run(self._set_meta, key, value)

    def _set_meta(self, key: str, value: str) -> None:
        with self._tx():
            self.db.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    async def update_meta(self, key: str, update: Callable[[str | None], str]) -> str:
        return await self._run(self._update_meta, key, update)

    def _update_meta(self, key: str, update: Callable[[str | None], str]) -> str:
        with self._tx():  # BEGIN IMMEDIATE: another process's update waits for this one
            old = self._scalar("SELECT value FROM meta WHERE key = ?", key)
            new = update(None if old is None else str(old))
            self.db.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, new),
            )
        return new

    # -- lifecycle -----------------------------------------------------------------------
    async def ping(self) -> None:
        await self._run(self._scalar, "SELECT 1")

    async def close(self) -> None:
        try:
            async with asyncio.timeout(GOODBYE_S):
                await self.flush()
                if self._db is not None:
                    await self._run(self.db.close)
                    self._db = None
        except TimeoutError:
            # A call is stuck (another process holds the write lock, a hung disk): leave the
            # connection to the process's end. Every commit is durable already.
            log.warning("store.close_abandoned", hint=f"no answer in {GOODBYE_S:g}s")
            for task in (self._queued_writer, self._flusher):
                if task is not None:
                    task.cancel()
            self._pool.shutdown(wait=False, cancel_futures=True)
            return
        self._pool.shutdown(wait=True)
