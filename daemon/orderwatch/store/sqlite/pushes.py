"""Runa's pushes in the embedded store: each one recorded by its Svix message id and its order
expedited in one transaction (so a crash after the answer loses nothing, and a retry of the
same message changes nothing), and what `status` shows of them."""

from __future__ import annotations

from collections.abc import Sequence

from orderwatch.store.base import EXPEDITED_AT, PUSH_RETENTION_S, PushOutcome, PushSeen
from orderwatch.store.sqlite.connection import SqliteConnection

_CHUNK = 500  # ids per statement: under SQLite's parameter limit anywhere
_KEEP = (
    "INSERT INTO pushes(push_id, order_id, received_at) VALUES (?, ?, ?)"
    " ON CONFLICT(push_id) DO NOTHING"
)
# A lease that ran out is no one's any more: such an order is due already, and expedited.
_ORDER = "SELECT state, lease_owner IS NOT NULL AND next_poll_at > ? FROM orders WHERE id = ?"


class SqlitePushes(SqliteConnection):
    """Recording pushes and reading them back."""

    async def accept_pushes(
        self, pushes: Sequence[tuple[str, str]], now: float, track_unknown: bool
    ) -> list[PushOutcome]:
        return await self._run(self._accept_pushes, list(pushes), now, track_unknown)

    def _accept_pushes(
        self, pushes: list[tuple[str, str]], now: float, track_unknown: bool
    ) -> list[PushOutcome]:
        db = self.db
        out: list[PushOutcome] = []
        added = 0
        with self._tx(durable=True):
            for push_id, order_id in pushes:
                if db.execute(_KEEP, (push_id, order_id, now)).rowcount != 1:
                    out.append("duplicate")
                    continue
                row = db.execute(_ORDER, (now, order_id)).fetchone()
                if row is None and not track_unknown:
                    out.append("untracked")
                elif row is None:
                    db.execute(
                        "INSERT INTO orders(id, state, added_at, next_poll_at)"
                        " VALUES (?, 'pending', ?, ?)",
                        (order_id, now, EXPEDITED_AT),
                    )
                    added += 1
                    out.append("added")
                elif row[0] != "pending":
                    out.append("ended")
                elif row[1]:
                    out.append("leased")
                else:
                    db.execute(
                        "UPDATE orders SET next_poll_at = ? WHERE id = ?", (EXPEDITED_AT, order_id)
                    )
                    out.append("expedited")
            if added:
                db.execute("UPDATE order_counts SET n = n + ? WHERE state = 'pending'", (added,))
            db.execute("DELETE FROM pushes WHERE received_at < ?", (now - PUSH_RETENTION_S,))
        return out

    async def pushes_for(self, order_ids: Sequence[str]) -> dict[str, PushSeen]:
        return await self._run(self._pushes_for, list(order_ids))

    def _pushes_for(self, order_ids: list[str]) -> dict[str, PushSeen]:
        seen: dict[str, PushSeen] = {}
        for i in range(0, len(order_ids), _CHUNK):  # a few ids (status): no JSON needed
            chunk = order_ids[i : i + _CHUNK]
            rows = self.db.execute(
                "SELECT order_id, COUNT(*), MIN(received_at), MAX(received_at) FROM pushes"
                f" WHERE order_id IN ({','.join('?' * len(chunk))}) GROUP BY order_id",
                chunk,
            ).fetchall()
            seen |= {r[0]: PushSeen(int(r[1]), float(r[2]), float(r[3])) for r in rows}
        return seen
