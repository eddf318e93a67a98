"""Orders in and out of the embedded store: adding them, leasing the due ones (claims),
checking a lease, finishing an order, and handing leases back."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

import structlog

from orderwatch.core.errors import StoreError
from orderwatch.store.base import EXPEDITED_AT, Claim, EventRecord, OrderState, finish_params
from orderwatch.store.sqlite.connection import SqliteConnection

log = structlog.get_logger("orderwatch.store")
_CHUNK = 20_000
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


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


class SqliteClaims(SqliteConnection):
    """Adding, claiming, finishing and releasing orders."""

    async def add_orders(self, order_ids: Iterable[str], now: float, first_poll_at: float) -> int:
        return await self._run(self._add_orders, order_ids, now, first_poll_at)

    def _add_orders(self, order_ids: Iterable[str], now: float, first_poll_at: float) -> int:
        added = 0
        for chunk in _chunks(order_ids, _CHUNK):
            before = self.db.total_changes
            with self._tx(durable=True):
                if self.one_statement:  # one statement: no GIL hand-off per row
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
            # Two statements, each its own transaction: every statement is a GIL round with
            # the event loop, which under load costs it more than SQLite's work. The UPDATE
            # takes a row only if its fence is still the one the SELECT saw, so a claimer in
            # between (another store on the same file) makes it take fewer rows than
            # selected, never the same row.
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

    async def expedite(
        self, order_ids: Sequence[str], by: str = "push"
    ) -> tuple[list[str], list[str]]:
        return await self._run(self._expedite, list(order_ids), by)

    def _expedite(self, order_ids: list[str], by: str) -> tuple[list[str], list[str]]:
        expedited: list[str] = []
        leased: list[str] = []
        for chunk in _chunks(order_ids, _CHUNK):
            ids = json.dumps(chunk)
            with self._tx(durable=True):
                rows = self.db.execute(
                    "SELECT id, lease_owner IS NOT NULL FROM orders"
                    " WHERE state = 'pending' AND id IN (SELECT value FROM json_each(?))",
                    (ids,),
                ).fetchall()
                self.db.execute(
                    "UPDATE orders SET found_by = ?, next_poll_at = CASE WHEN lease_owner"
                    " IS NULL THEN ? ELSE next_poll_at END WHERE state = 'pending'"
                    " AND id IN (SELECT value FROM json_each(?))",
                    (by, EXPEDITED_AT, ids),
                )
            for order_id, is_leased in rows:
                (leased if is_leased else expedited).append(order_id)
        return expedited, leased

    async def holds(self, claim: Claim) -> bool:
        fence = await self._run(
            self._scalar,
            "SELECT fence FROM orders WHERE id = ? AND state = 'pending'",
            claim.order_id,
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
                " polls = ?, error_streak = ?, first_404_at = ?,"
                " found_by = CASE WHEN ? THEN found_by ELSE 'poll' END"
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

    async def pull_forward(self, beyond: float, to: float) -> int:
        return await self._run(self._pull_forward, beyond, to)

    def _pull_forward(self, beyond: float, to: float) -> int:
        with self._tx():
            cur = self.db.execute(
                "UPDATE orders SET next_poll_at = ? WHERE state = 'pending' AND next_poll_at > ?",
                (to, beyond),
            )
        return cur.rowcount

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
