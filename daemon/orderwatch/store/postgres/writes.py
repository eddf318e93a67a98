"""The shared store's writes after a poll (reschedule, release), each one statement; the
unawaited ones (`reschedule_nowait`) run as tasks that closing waits for."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import structlog

from orderwatch.core.errors import StoreError
from orderwatch.store.base import Claim
from orderwatch.store.postgres.connection import PostgresConnection

log = structlog.get_logger("orderwatch.store")


class PostgresWrites(PostgresConnection):
    """Rescheduling and releasing claims, awaited or not."""

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
