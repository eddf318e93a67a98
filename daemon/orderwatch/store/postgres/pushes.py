"""Runa's pushes in the shared store: the embedded store's semantics (store/sqlite/pushes.py)
as a few set-based statements in one transaction, whichever replica the push reached."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from orderwatch.store.base import EXPEDITED_AT, PUSH_RETENTION_S, PushOutcome, PushSeen
from orderwatch.store.postgres.connection import PostgresConnection

# Sorted everywhere: replicas lock rows in one order. Existing orders are locked before the
# order counts, as `finish` does (an order, then the counts): no deadlock between them.
_KEEP = (
    "INSERT INTO pushes(push_id, order_id, received_at)"
    " SELECT p, o, %s FROM unnest(%s::text[], %s::text[]) AS t(p, o) ORDER BY p"
    " ON CONFLICT (push_id) DO NOTHING RETURNING push_id"
)
_LOCK = (
    "SELECT id, state, lease_owner IS NOT NULL AND next_poll_at > %s FROM orders"
    " WHERE id = ANY(%s::text[]) ORDER BY id FOR UPDATE"
)
_EXPEDITE = (
    "UPDATE orders SET next_poll_at = %s WHERE id = ANY(%s::text[]) AND state = 'pending'"
    " AND (lease_owner IS NULL OR next_poll_at <= %s) RETURNING id"
)
_ADD = (
    "INSERT INTO orders(id, state, added_at, next_poll_at)"
    " SELECT x, 'pending', %s, %s FROM unnest(%s::text[]) AS x ORDER BY x"
    " ON CONFLICT (id) DO NOTHING RETURNING id"
)


async def _ids(conn: psycopg.AsyncConnection[Any], sql: str, *args: Any) -> set[str]:
    cur = await conn.execute(sql, args)
    return {r[0] for r in await cur.fetchall()}


class PostgresPushes(PostgresConnection):
    """Recording pushes and reading them back."""

    async def accept_pushes(
        self, pushes: Sequence[tuple[str, str]], now: float, track_unknown: bool
    ) -> list[PushOutcome]:
        first: dict[str, str] = {}
        for push_id, order_id in pushes:
            first.setdefault(push_id, order_id)
        outcome: dict[str, PushOutcome] = {}
        async with self._tx("accept pushes") as conn:
            new = await _ids(conn, _KEEP, now, list(first), list(first.values()))
            wanted = sorted({first[p] for p in new})
            cur = await conn.execute(_LOCK, (now, wanted))
            for order_id, state, leased in await cur.fetchall():
                outcome[order_id] = (
                    "ended" if state != "pending" else "leased" if leased else "expedited"
                )
            due = [i for i, o in outcome.items() if o == "expedited"]
            if due:
                await conn.execute(_EXPEDITE, (EXPEDITED_AT, due, now))
            missing = [i for i in wanted if i not in outcome]
            if missing and track_unknown:
                added = await _ids(conn, _ADD, now, EXPEDITED_AT, missing)
                # Added by someone else meanwhile: expedited like any order found pending.
                raced = await _ids(conn, _EXPEDITE, EXPEDITED_AT, sorted(set(missing) - added), now)
                for order_id in added:
                    outcome[order_id] = "added"
                for order_id in raced:
                    outcome[order_id] = "expedited"
                if added:
                    await conn.execute(
                        "UPDATE order_counts SET n = n + %s WHERE state = 'pending'", (len(added),)
                    )
            await conn.execute(
                "DELETE FROM pushes WHERE received_at < %s", (now - PUSH_RETENTION_S,)
            )
        return _per_push(pushes, new, outcome)

    async def pushes_for(self, order_ids: Sequence[str]) -> dict[str, PushSeen]:
        rows = await self._all(
            "SELECT order_id, COUNT(*), MIN(received_at), MAX(received_at) FROM pushes"
            " WHERE order_id = ANY(%s::text[]) GROUP BY order_id",
            list(order_ids),
        )
        return {r[0]: PushSeen(int(r[1]), float(r[2]), float(r[3])) for r in rows}


def _per_push(
    pushes: Sequence[tuple[str, str]], new: set[str], outcome: dict[str, PushOutcome]
) -> list[PushOutcome]:
    """One outcome per push, in order: a push id's second appearance is a duplicate."""
    out: list[PushOutcome] = []
    seen: set[str] = set()
    for push_id, order_id in pushes:
        if push_id in seen or push_id not in new:
            out.append("duplicate")
        else:
            out.append(outcome.get(order_id, "untracked"))
        seen.add(push_id)
    return out
