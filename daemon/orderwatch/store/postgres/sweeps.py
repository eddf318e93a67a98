"""What a sweep of the list endpoint asks of the shared store: pushing back the next poll of
orders it saw PROCESSING, and a named lease, so that one replica sweeps at a time."""

from __future__ import annotations

import json
from collections.abc import Sequence

from orderwatch.store.base import EXPEDITED_AT
from orderwatch.store.postgres.connection import PostgresConnection


class PostgresSweeps(PostgresConnection):
    """Deferring polls and holding leases."""

    async def defer(
        self, order_ids: Sequence[str], due_before: float, until: float, give_up_after_s: float
    ) -> int:
        if not order_ids:
            return 0
        # SKIP LOCKED: a row another replica is claiming or finishing right now is its
        # business; waiting for it would only hold this sweep up.
        return await self._write(
            "defer polls",
            "WITH hit AS (SELECT id FROM orders WHERE id = ANY(%s::text[])"
            "  AND state = 'pending' AND lease_owner IS NULL AND next_poll_at > %s"
            "  AND next_poll_at < %s AND added_at + %s > %s ORDER BY id FOR UPDATE SKIP LOCKED)"
            " UPDATE orders o SET next_poll_at = %s FROM hit WHERE o.id = hit.id",
            sorted(set(order_ids)),
            EXPEDITED_AT,
            due_before,
            give_up_after_s,
            until,
            until,
        )

    async def hold_lease(self, name: str, owner: str, now: float, lease_s: float) -> bool:
        rows = await self._all(
            "INSERT INTO meta(key, value) VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            " WHERE (meta.value::jsonb ->> 'owner') = %s"
            " OR (meta.value::jsonb ->> 'until')::float8 <= %s"
            " RETURNING 1",
            f"lease:{name}",
            json.dumps({"owner": owner, "until": now + lease_s}),
            owner,
            now,
            what="hold a lease",
        )
        return bool(rows)
