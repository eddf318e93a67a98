"""The embedded store: one SQLite file (WAL) under state_dir, owned by one daemon at a time.

All SQL runs on one dedicated thread with one connection, so the event loop never blocks on
disk and SQLite sees no concurrent use of a connection. Other processes (`orderwatch add`,
`status`, `replay`) open their own connection; WAL lets them read and write beside the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import structlog

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
from orderwatch.store.lock import prepare_state_dir
from orderwatch.store.schema import (
    DELIVERY_STATES,
    ORDER_STATES,
    SCHEMA_VERSION,
    SEED_COUNTS,
    TABLES,
)

T = TypeVar("T")
DB_NAME = "orderwatch.sqlite3"
_CHUNK = 20_000
QUEUED_WRITE_DELAY_S = 0.05  # how long queued writes in company wait for more
_RESCHEDULE = (
    "UPDATE orders SET next_poll_at = ?, polls = ?, error_streak = ?,"
    " first_404_at = ?, last_error = ?, last_body = COALESCE(?, last_body),"
    " lease_owner = NULL WHERE id = ? AND fence = ? AND state = 'pending'"
)
# The hot writes as one statement each. The sqlite3 module lets go of the GIL at every row
# it steps through, and under load the event loop thread takes it each time: a claim of 128
# rows cost about 128 thread switches each way (the store thread switched 0.9 times per poll
# in the overhead bench; 0.2 with these and the batch wait of _write_queued, as counted by
# bench.switches). Rows travel as one JSON parameter or result (SQLite 3.33+ with JSON,
# checked at open; older versions go row by row). Times leave SQLite with 17 digits:
# json_array's 15 would round them.
_RESCHEDULE_ALL = (
    "UPDATE orders SET next_poll_at = {}, polls = {}, error_streak = {}, first_404_at = {},"
    " last_error = {}, last_body = COALESCE(CAST({} AS BLOB), last_body), lease_owner = NULL"
    " FROM json_each(?) AS u WHERE orders.id = {} AND orders.fence = {}"
    " AND orders.state = 'pending'"
).format(*(f"json_extract(u.value, '$[{i}]')" for i in range(8)))  # _RESCHEDULE's order
_ADD = (
    "INSERT INTO orders(id, state, added_at, next_poll_at)"
    " VALUES (?, 'pending', ?, ?) ON CONFLICT(id) DO NOTHING"
)
_ADD_ALL = (  # "WHERE true": SQLite's parser needs it before ON CONFLICT after a SELECT
    "INSERT INTO orders(id, state, added_at, next_poll_at)"
    " SELECT value, 'pending', ?, ? FROM json_each(?) WHERE true ON CONFLICT(id) DO NOTHING"
)
# A time as a JSON number with all 17 digits (json_array's own 15 would round it), so that
# json.loads makes the float itself: no float(str) per field on the store's thread.
_TIME = "json(printf('%!.17g', {}))"
_DUE = "FROM orders WHERE state = 'pending' AND next_poll_at <= ? ORDER BY next_poll_at LIMIT ?"
_CLAIM_ROWS = (
    f"SELECT id, fence + 1, next_poll_at, added_at, polls, error_streak, first_404_at {_DUE}"
)
_CLAIM_ALL = (
    f"SELECT json_group_array(json_array(id, fence + 1, {_TIME.format('next_poll_at')},"
    f" {_TIME.format('added_at')}, polls, error_streak,"
    f" IIF(first_404_at IS NULL, NULL, {_TIME.format('first_404_at')})))"
    f" FROM (SELECT * {_DUE})"
)
# The claim's second half: lease the rows _CLAIM_ALL found, each only if no one claimed it
# since (its fence is still one below the claim's); then, should any have been, which ones
# this claim holds.
_TAKE_CLAIMED = (
    "UPDATE orders SET lease_owner = ?, fence = fence + 1, next_poll_at = ?"
    " FROM json_each(?) AS c WHERE orders.id = json_extract(c.value, '$[0]')"
    " AND orders.fence + 1 = json_extract(c.value, '$[1]') AND orders.state = 'pending'"
)
_CLAIMED_BY = (
    "SELECT json_group_array(orders.id) FROM orders, json_each(?) AS c"
    " WHERE orders.id = json_extract(c.value, '$[0]')"
    " AND orders.fence = json_extract(c.value, '$[1]')"
    " AND orders.lease_owner = ? AND orders.next_poll_at = ?"
)
log = structlog.get_logger("orderwatch.store")


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


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


class SqliteStore:
    """Store over one SQLite file. Open with `await SqliteStore.open(state_dir)`."""

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
    async def open(cls, state_dir: Path, *, daemon: bool = False, now: float = 0.0) -> SqliteStore:
        """Open (creating if needed). `daemon=True` also frees leases a crash left behind:
        only call it while holding the DaemonLock."""
        prepare_state_dir(state_dir)
        store = cls(state_dir / DB_NAME)
        await store._run(store._connect)
        if daemon:
            await store._run(store._recover, now)
        return store

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
            db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        self._db = db

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "store is closed"
        return self._db

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

    # -- orders --------------------------------------------------------------------------
    async def add_orders(self, order_ids: Iterable[str], now: float, first_poll_at: float) -> int:
        return await self._run(self._add_orders, order_ids, now, first_poll_at)

    def _add_orders(self, order_ids: Iterable[str], now: float, first_poll_at: float) -> int:
        added = 0
        for chunk in _chunks(order_ids, _CHUNK):
            before = self.db.total_changes
            with self._tx(durable=True):
                if self.one_statement:  # 2.5 times faster than row by row
                    self.db.execute(_ADD_ALL, (now, first_poll_at, json.dumps(chunk)))
                else:
                    self.db.executemany(_ADD, [(i, now, first_poll_at) for i in chunk])
                new = self.db.total_changes - before
                self.db.execute("UPDATE order_counts SET n = n + ? WHERE state = 'pending'", (new,))
            added += new
        return added

    async def claim_due(self, now: float, limit: int, owner: str, lease_s: float) -> list[Claim]:
        # The claim's executor job carries the queued writes: one trip to the store thread
        # instead of two, and the claim sees every outcome queued before it.
        queued, self._queued = self._queued, []
        try:
            return await self._run(self._claim_due, now, limit, owner, lease_s, queued)
        except StoreError as e:
            if queued:
                log.error("store.write_failed", writes=len(queued), error=str(e))
            raise

    def _claim_due(
        self, now: float, limit: int, owner: str, lease_s: float, queued: list[tuple[Any, ...]]
    ) -> list[Claim]:
        if queued:
            self._write_queued_rows(queued)
            queued.clear()  # written: should the claim fail, they are not reported lost
        until = now + lease_s
        if not self.one_statement:
            with self._tx():
                rows = self.db.execute(_CLAIM_ROWS, (now, limit)).fetchall()
                self.db.executemany(
                    "UPDATE orders SET lease_owner = ?, fence = ?, next_poll_at = ? WHERE id = ?",
                    [(owner, r[1], until, r[0]) for r in rows],
                )
        else:
            # Two statements, each its own transaction: no BEGIN or COMMIT around them. Each
            # statement is a round of the GIL between this thread and the event loop's, and
            # under load those rounds, not SQLite's work, were most of what the store cost
            # the loop (bench.ab: +2.7%, 9 of 10 rounds). The UPDATE takes a row only if its
            # fence is still the one the SELECT saw, so a claimer in between (another store
            # on the same file) makes it take fewer rows than selected, never the same row.
            (found,) = self.db.execute(_CLAIM_ALL, (now, limit)).fetchone()
            rows = json.loads(found)
            if rows:
                taken = self.db.execute(_TAKE_CLAIMED, (owner, until, found)).rowcount
                if taken != len(rows):
                    (mine,) = self.db.execute(_CLAIMED_BY, (found, owner, until)).fetchone()
                    ours = set(json.loads(mine))
                    rows = [r for r in rows if r[0] in ours]
        return [Claim(r[0], r[1], r[2], r[3], r[4], r[5], r[6], lease_until=until) for r in rows]

    async def next_due_at(self) -> float | None:
        return await self._run(
            self._scalar, "SELECT MIN(next_poll_at) FROM orders WHERE state = 'pending'"
        )

    def _scalar(self, sql: str, *args: Any) -> Any:
        row = self.db.execute(sql, args).fetchone()
        return row[0] if row else None

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
        args = (next_poll_at, polls, error_streak, first_404_at, last_error, last_body)
        return await self._grouped(_RESCHEDULE, (*args, claim.order_id, claim.fence))

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
        args = (next_poll_at, polls, error_streak, first_404_at, last_error, last_body)
        self._queued.append((*args, claim.order_id, claim.fence))
        if self._queued_writer is None or self._queued_writer.done():
            self._queued_writer = asyncio.create_task(self._write_queued())

    async def release(self, claim: Claim, next_poll_at: float | None = None) -> bool:
        due = claim.due_at if next_poll_at is None else next_poll_at
        return await self._grouped(
            "UPDATE orders SET next_poll_at = ?, lease_owner = NULL"
            " WHERE id = ? AND fence = ? AND state = 'pending'",
            (due, claim.order_id, claim.fence),
        )

    # Group commit: the awaited hot writes (a released claim, a reschedule someone waits for)
    # that arrive while a transaction is running are committed together in the next one.
    async def _grouped(self, sql: str, args: tuple[Any, ...]) -> bool:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._group.append((sql, args, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_groups())
        return await fut

    async def _flush_groups(self) -> None:
        while self._group:
            batch, self._group = self._group, []
            try:
                results = await self._run(self._write_group, [(q, a) for q, a, _ in batch])
            except StoreError as e:
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (*_, fut), ok in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(ok)

    # Queued writes (`reschedule_nowait`): nobody waits for them, so they gather and go as one
    # statement (`_write_queued_rows`), or ahead of the next claim if a claim comes first.
    # While writes come in company (the last batch had more than one), each batch waits up
    # to QUEUED_WRITE_DELAY_S for more: at 1,000 polls/s that took the steady cost from 45% to
    # 33% of a core (and to 52% from 63% on a slower day, when only the first batch waited
    # and the rest went back to back). A lone write goes at once: at 5/s a timer per write
    # was one more wakeup per poll (1.7% of a core against 0.8%). `flush` cuts the wait
    # short. A failure is logged as `store.write_failed`: the orders stay leased and are
    # polled again.
    async def _write_queued(self) -> None:
        try:
            while self._queued:
                if self._last_batch > 1:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._write_now.wait(), QUEUED_WRITE_DELAY_S)
                queued, self._queued = self._queued, []
                if not queued:
                    return  # a claim's transaction carried them
                self._last_batch = len(queued)
                try:
                    await self._run(self._write_queued_rows, queued)
                except StoreError as e:
                    log.error("store.write_failed", writes=len(queued), error=str(e))
        finally:
            self._write_now.clear()

    def _write_queued_rows(self, rows: list[tuple[Any, ...]]) -> None:
        """Queued reschedules: one statement over a JSON array where SQLite can (its own
        transaction: see `_claim_due` for why no BEGIN/COMMIT), bodies as UTF-8 text (they
        are JSON); a body that is not UTF-8 text goes row by row, in a transaction."""
        if not self.one_statement:
            with self._tx():
                self.db.executemany(_RESCHEDULE, rows)
            return
        as_text: list[tuple[Any, ...]] = []
        as_bytes: list[tuple[Any, ...]] = []
        for r in rows:
            try:
                text = None if r[5] is None else r[5].decode()
            except UnicodeDecodeError:
                as_bytes.append(r)
                continue
            if text is not None and "\0" in text:  # SQLite's text functions stop at NUL
                as_bytes.append(r)
            else:
                as_text.append((*r[:5], text, *r[6:]))
        if as_text:
            self.db.execute(_RESCHEDULE_ALL, (json.dumps(as_text, ensure_ascii=False),))
        if as_bytes:
            with self._tx():
                self.db.executemany(_RESCHEDULE, as_bytes)

    async def flush(self) -> None:
        for task in (self._queued_writer, self._flusher):
            if task is not None and not task.done():
                self._write_now.set()
                await asyncio.shield(task)

    def _write_group(self, ops: list[tuple[str, tuple[Any, ...]]]) -> list[bool]:
        with self._tx():
            return [self.db.execute(sql, args).rowcount == 1 for sql, args in ops]

    async def finish(
        self,
        claim: Claim,
        state: OrderState,
        final_status: str,
        event: EventRecord,
        sinks: Sequence[str],
    ) -> bool:
        return await self._run(self._finish, claim, state, final_status, event, sinks)

    def _finish(
        self,
        claim: Claim,
        state: OrderState,
        final_status: str,
        event: EventRecord,
        sinks: Sequence[str],
    ) -> bool:
        now = event.created_at
        with self._tx(durable=True):
            cur = self.db.execute(
                "UPDATE orders SET state = ?, final_status = ?, finished_at = ?,"
                " next_poll_at = NULL, lease_owner = NULL, last_error = NULL,"
                " polls = ?, error_streak = ?, first_404_at = ?"
                " WHERE id = ? AND fence = ? AND state = 'pending'",
                finish_params(claim, state, final_status, now),
            )
            if cur.rowcount != 1:
                return False
            self.db.execute(
                "UPDATE order_counts SET n = n + (CASE state WHEN ? THEN 1 ELSE -1 END)"
                " WHERE state IN ('pending', ?)",
                (state, state),
            )
            self.db.execute(
                "INSERT INTO events(event_id, order_id, event_type, body, created_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(event_id) DO NOTHING",
                (event.event_id, event.order_id, event.event_type, event.body, now),
            )
            self.db.executemany(
                "INSERT INTO deliveries(event_id, sink, state, next_attempt_at, updated_at)"
                " VALUES (?, ?, 'pending', ?, ?) ON CONFLICT(event_id, sink) DO NOTHING",
                [(event.event_id, s, now, now) for s in sinks],
            )
        return True

    async def holds(self, claim: Claim) -> bool:
        fence = await self._run(
            self._scalar,
            "SELECT fence FROM orders WHERE id = ? AND state = 'pending'",
            claim.order_id,
        )
        return bool(fence == claim.fence)

    async def last_body(self, order_id: str) -> bytes | None:
        body = await self._run(self._scalar, "SELECT last_body FROM orders WHERE id = ?", order_id)
        return bytes(body) if body is not None else None

    async def counts(self) -> dict[str, int]:
        rows = await self._run(self._all, "SELECT state, n FROM order_counts")
        return {s: 0 for s in ORDER_STATES} | {r[0]: r[1] for r in rows}

    def _all(self, sql: str, *args: Any) -> list[Any]:
        return self.db.execute(sql, args).fetchall()

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
                f" final_status, finished_at FROM orders WHERE id IN ({marks})",
                part,
            ):
                found[r[0]] = OrderRow(*r)
        return [found[i] for i in order_ids if i in found]

    # -- deliveries ----------------------------------------------------------------------
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
                    claims.append(DeliveryClaim(self._event(event_id), sink, attempts, fence))
        return claims

    def _event(self, event_id: str) -> EventRecord:
        r = self.db.execute(
            "SELECT event_id, order_id, event_type, body, created_at FROM events"
            " WHERE event_id = ?",
            (event_id,),
        ).fetchone()
        return EventRecord(r[0], r[1], r[2], bytes(r[3]), r[4])

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

    async def pull_forward(self, beyond: float, to: float) -> int:
        return await self._run(self._pull_forward, beyond, to)

    def _pull_forward(self, beyond: float, to: float) -> int:
        with self._tx():
            cur = self.db.execute(
                "UPDATE orders SET next_poll_at = ? WHERE state = 'pending' AND next_poll_at > ?",
                (to, beyond),
            )
        return cur.rowcount

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

    async def get_event(self, order_id: str) -> EventRecord | None:
        return await self._run(self._get_event, order_id)

    def _get_event(self, order_id: str) -> EventRecord | None:
        r = self.db.execute(
            "SELECT event_id FROM events WHERE order_id = ? LIMIT 1", (order_id,)
        ).fetchone()
        return self._event(r[0]) if r else None

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

    # -- lifecycle -----------------------------------------------------------------------
    async def release_owner(self, owner: str, now: float) -> None:
        await self._run(self._release_owner, owner, now)

    def _release_owner(self, owner: str, now: float) -> None:
        with self._tx():
            self.db.execute(
                "UPDATE orders SET lease_owner = NULL, next_poll_at = MIN(next_poll_at, ?)"
                " WHERE lease_owner = ? AND state = 'pending'",
                (now, owner),
            )
            self.db.execute(
                "UPDATE deliveries SET lease_owner = NULL,"
                " next_attempt_at = MIN(next_attempt_at, ?)"
                " WHERE lease_owner = ? AND state = 'pending'",
                (now, owner),
            )

    def shared_limiter(self, rate: float) -> RateLimiter | None:
        return None  # one daemon per embedded state: its own limiter is the only one

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


def _has_json(db: sqlite3.Connection) -> bool:
    try:
        db.execute("SELECT json_array(1)")
    except sqlite3.OperationalError:
        return False
    return True
