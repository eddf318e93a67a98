"""The embedded store's hot writes after a poll (reschedule, release): awaited ones are
group-committed, unawaited ones (`reschedule_nowait`) queue up and go in batches."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import structlog

from orderwatch.core.errors import StoreError
from orderwatch.store.base import Claim
from orderwatch.store.sqlite.connection import SqliteConnection

log = structlog.get_logger("orderwatch.store")
QUEUED_WRITE_DELAY_S = 0.05  # how long queued writes in company wait for more
_RESCHEDULE = (
    "UPDATE orders SET next_poll_at = ?, polls = ?, error_streak = ?,"
    " first_404_at = ?, last_error = ?, last_body = COALESCE(?, last_body),"
    " lease_owner = NULL WHERE id = ? AND fence = ? AND state = 'pending'"
)
# The hot writes as one statement over a JSON array, not one per row: sqlite3 lets go of the
# GIL at every row, and under load each is a thread switch with the event loop. Needs SQLite
# 3.33+ with JSON (checked at open: `one_statement`); older versions go row by row.
_RESCHEDULE_ALL = (
    "UPDATE orders SET next_poll_at = {}, polls = {}, error_streak = {}, first_404_at = {},"
    " last_error = {}, last_body = COALESCE(CAST({} AS BLOB), last_body), lease_owner = NULL"
    " FROM json_each(?) AS u WHERE orders.id = {} AND orders.fence = {}"
    " AND orders.state = 'pending'"
).format(*(f"json_extract(u.value, '$[{i}]')" for i in range(8)))  # _RESCHEDULE's order


class SqliteWrites(SqliteConnection):
    """Rescheduling and releasing claims: the group commit and the queued-write batches."""

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

    def _write_group(self, ops: list[tuple[str, tuple[Any, ...]]]) -> list[bool]:
        with self._tx():
            return [self.db.execute(sql, args).rowcount == 1 for sql, args in ops]

    # Queued writes (`reschedule_nowait`): nobody waits for them, so they gather and go as one
    # statement (`_write_queued_rows`), or ahead of the next claim if a claim comes first.
    # While writes come in company (the last batch had more than one), each batch waits up
    # to QUEUED_WRITE_DELAY_S for more: fewer, larger commits under load. A lone write goes
    # at once: at low rates a timer per write would be one more wakeup per poll. `flush` cuts
    # the wait short. A failure is logged as `store.write_failed`: the orders stay leased and
    # are polled again.
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
