"""The cluster-wide rate limit: send slots handed out by PostgreSQL, so the sum of every
replica's GETs keeps `requests_per_second` in any 1-second window.

One row holds the next free slot, on the database's clock (`clock_timestamp()`), so replicas'
clocks never have to agree. Each `acquire` takes the next slot in one statement and moves the
row on by `(1 + margin) / rate`; the replica sleeps until its slot, translated to its own
monotonic clock with the offset measured by that same statement. Three guards keep the
server's view within the rate:
- restart safety: a new limiter's first slot is at least one window after the last slot anyone
  reserved, because a process that was killed cannot tell what it sent in its last second;
- lateness: a replica that wakes more than half the spacing margin after its slot could bunch
  with the next replicas' sends, so it leaves that slot unused and takes a new one. An answer
  that took longer than the network's usual round trip (beyond what the server spent waiting
  for the row lock, which it reports) may have been held on its way back: the slot may then
  lie that much earlier than this replica places it, so that much counts as late already;
- a local hard log (as `SpacedLimiter`'s): never more than floor(rate) sends from this process
  in any window, whatever the database said;
- late sends: a send whose connection was ready only after that same lateness limit (the
  client calls `confirm` then) gives up its slot too and leaves at a new one. The slot it
  leaves unused is still counted: the cluster sends a little less, never more.
The database is never bypassed: when it cannot be reached, `acquire` raises StoreError and
nothing is sent (a partitioned replica goes quiet instead of exceeding the cluster's rate).
"""

from __future__ import annotations

import asyncio
import math
import select
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from orderwatch.core.errors import StoreError
from orderwatch.core.rate_limit import GRANTED, after_window

LIMITER_DDL = (
    "CREATE TABLE IF NOT EXISTS rate_limiter (name TEXT PRIMARY KEY,"
    " next_slot DOUBLE PRECISION NOT NULL)"
)
OP_TIMEOUT_S = 30.0  # a statement that has not answered by then is treated as a lost store

# One round trip. Commit without waiting for the WAL flush (set_config(..., true) lasts until
# this statement's own commit): the row lock is held only for the update, so slots are handed
# out at thousands a second even on slow disks. A database crash can forget the last few
# hundred milliseconds of slots; the local log still caps each replica.
_RESERVE = """
WITH c AS (SELECT set_config('synchronous_commit', 'off', true))
INSERT INTO rate_limiter AS r (name, next_slot)
SELECT %(name)s, extract(epoch FROM clock_timestamp()) + %(step)s FROM c
ON CONFLICT (name) DO UPDATE SET next_slot =
    GREATEST(r.next_slot + %(lead)s, extract(epoch FROM clock_timestamp())) + %(step)s
RETURNING next_slot - %(step)s, extract(epoch FROM clock_timestamp()),
    extract(epoch FROM clock_timestamp() - statement_timestamp())
"""


# A 429 seen by one replica holds every replica: no slot before the pause ends.
_HOLD = """
UPDATE rate_limiter SET next_slot =
    GREATEST(next_slot, extract(epoch FROM clock_timestamp()) + %(pause)s)
WHERE name = %(name)s
"""


@asynccontextmanager
async def store_errors(what: str, timeout_s: float = OP_TIMEOUT_S) -> AsyncIterator[None]:
    """Turn driver and pool errors into StoreError with a message that is safe to log: the
    exception's class and the first line of the server's message, never the DSN (parse errors
    quote it, and it may hold a password). Also bounds the operation in time."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError:
        raise StoreError(f"PostgreSQL state store: {what}: no answer in {timeout_s:g}s") from None
    except psycopg.Error as e:
        detail = f": {first_line(e)}" if e.sqlstate else ""  # server messages hold no DSN
        raise StoreError(f"PostgreSQL state store: {what}: {type(e).__name__}{detail}") from None


@asynccontextmanager
async def pooled(
    pool: AsyncConnectionPool[Any], what: str
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A live pooled connection, errors as StoreError (see `store_errors`). A connection the
    server closed while it sat idle in the pool (restart, failover, pg_terminate_backend) has
    something to read; it is closed, which makes the pool drop it, and the next one is tried:
    no round trip to check, and no caller fails for a connection nobody was using."""
    async with store_errors(what):
        for _ in range((pool.max_size or 1) + 1):
            async with pool.connection() as conn:
                if _closed_while_idle(conn):
                    await conn.close()
                    continue
                yield conn
                return
        raise psycopg.OperationalError("every pooled connection was closed by the server")


def _closed_while_idle(conn: psycopg.AsyncConnection[Any]) -> bool:
    if conn.closed:
        return True
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN)
    return bool(poller.poll(0))


def first_line(e: Exception) -> str:
    """The first line of an error's message, shortened (libpq adds hint lines)."""
    text = str(e)
    return text.splitlines()[0][:200] if text else ""


class PostgresLimiter:
    """See the module docstring. `acquire()` returns when this process may send one request."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        rate: float,
        margin: float = 0.02,
        *,
        name: str = "api",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.pool = pool
        self.name = name
        self.window_s = 1.0 + margin
        self.capacity = max(1, math.floor(rate))
        # Even spacing by whole requests: any window of 1 s then holds at most floor(rate)
        # slots (a fractional rate such as 2.5 cannot mean 3 in one second).
        self.step_s = self.window_s / (self.capacity if rate >= 1 else rate)
        self.late_limit_s = (self.capacity * self.step_s - 1.0) / 2  # half the slack
        self._lead_s = max(0.0, self.window_s - self.step_s)  # first slot: one window later
        self._first = True
        # Callers arriving while the first reservation is in flight wait for it: each of them
        # sending its own "first" would stack one window of lead per caller, and one sent
        # ahead of it would skip the lead altogether.
        self._first_lock = asyncio.Lock()
        self._clock = clock
        self._rtts: deque[float] = deque(maxlen=32)
        self._log: deque[float] = deque(maxlen=self.capacity)
        self.late_slots = 0  # slots given up because this process woke too late (a metric)

    def try_acquire(self) -> bool:
        """Never: every send here takes a slot from the database first."""
        return False

    async def acquire(self) -> None:
        while True:
            slot_at, unsure = await self._reserve()
            await self._sleep_until(slot_at)
            await self._wait_local_log()
            now = self._clock()
            earliest = slot_at - unsure  # where the slot may really lie
            if now - earliest <= self.late_limit_s:
                self._log.append(now)
                GRANTED.set(earliest)
                return
            self.late_slots += 1

    def confirm(self, granted: float | None = None) -> Awaitable[None] | None:
        """Called as this task's granted request is about to be written (`granted`: its slot;
        this task's last slot by default). Later than the lateness limit, the send takes a new
        slot (see the module docstring): await what this returns. None: nothing to wait for."""
        if granted is None:
            granted = GRANTED.get()
        if granted is None:
            return None
        GRANTED.set(None)
        if self._clock() - granted <= self.late_limit_s:
            return None
        self.late_slots += 1
        return self._take_new_slot()

    async def _take_new_slot(self) -> None:
        await self.acquire()
        GRANTED.set(None)

    async def hold(self, seconds: float) -> None:
        """A 429 reached this replica: move the cluster's next slot past the pause, so every
        replica waits it out (slots reserved before this call are still used)."""
        async with pooled(self.pool, "rate limiter hold") as conn:
            await conn.execute(_HOLD, {"name": self.name, "pause": seconds})

    async def _reserve(self) -> tuple[float, float]:
        """Take the next slot; return the latest time it may lie at on this process's
        monotonic clock, and how much earlier it may lie (see `_reserve_once`). The first one
        (after start-up) is taken alone and carries the restart lead."""
        if self._first:
            async with self._first_lock:
                if self._first:
                    slot = await self._reserve_once(self._lead_s)
                    self._first = False  # only once it succeeded: a failed try took no slot
                    return slot
        return await self._reserve_once(0.0)

    async def _reserve_once(self, lead_s: float) -> tuple[float, float]:
        params = {"name": self.name, "step": self.step_s, "lead": lead_s}
        async with pooled(self.pool, "rate limiter") as conn:
            sent = self._clock()
            cur = await conn.execute(_RESERVE, params)
            row = await cur.fetchone()
            received = self._clock()
        assert row is not None
        slot, db_now, locked = float(row[0]), float(row[1]), max(0.0, float(row[2]))
        travel = max(0.0, received - sent - locked)  # the round trip less the row lock's wait
        self._rtts.append(travel)
        net = min(self._rtts)  # the network's own round trip, as recently seen
        # The database read its clock after the lock, before answering. It did so at least
        # half the network's round trip before we got the answer (the latest it can have
        # been), and at least that long after we asked plus the lock's wait (the earliest).
        # The two differ by the travel time beyond the usual: an answer held on its way
        # back. Sleeping to the latest is never early; the difference counts as lateness.
        latest = received - net / 2 + (slot - db_now)
        return latest, travel - net

    async def _sleep_until(self, t: float) -> None:
        # A timer may fire a clock tick early: sleep again for the rest (one timer, no polling).
        while (wait := t - self._clock()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(wait)

    async def _wait_local_log(self) -> None:
        while (wait := after_window(self._log, self.window_s, now := self._clock()) - now) > 0:  # noqa: ASYNC110
            await asyncio.sleep(wait)
