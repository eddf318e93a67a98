"""What a sweep of the list endpoint asks of the embedded store: pushing back the next poll
of orders it saw PROCESSING, and a named lease (one sweep at a time)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from orderwatch.store.base import EXPEDITED_AT
from orderwatch.store.sqlite.connection import SqliteConnection

_PART = 500  # IDs per statement: far below SQLite's smallest limit on parameters (999)


class SqliteSweeps(SqliteConnection):
    """Deferring polls and holding leases."""

    async def defer(
        self, order_ids: Sequence[str], due_before: float, until: float, give_up_after_s: float
    ) -> int:
        return await self._run(self._defer, list(order_ids), due_before, until, give_up_after_s)

    def _defer(
        self, order_ids: list[str], due_before: float, until: float, give_up_after_s: float
    ) -> int:
        moved = 0
        with self._tx():
            for i in range(0, len(order_ids), _PART):
                part = order_ids[i : i + _PART]
                marks = ",".join("?" * len(part))
                moved += self.db.execute(
                    "UPDATE orders SET next_poll_at = ? WHERE state = 'pending'"
                    " AND lease_owner IS NULL AND next_poll_at > ? AND next_poll_at < ?"
                    f" AND added_at + ? > ? AND id IN ({marks})",
                    (until, EXPEDITED_AT, due_before, give_up_after_s, until, *part),
                ).rowcount
        return moved

    async def hold_lease(self, name: str, owner: str, now: float, lease_s: float) -> bool:
        return await self._run(self._hold_lease, f"lease:{name}", owner, now, now + lease_s)

    def _hold_lease(self, key: str, owner: str, now: float, until: float) -> bool:
        with self._tx():
            value = self._scalar("SELECT value FROM meta WHERE key = ?", key)
            if value is not None:
                held = json.loads(value)
                if held["owner"] != owner and held["until"] > now:
                    return False
            self.db.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps({"owner": owner, "until": until})),
            )
        return True
