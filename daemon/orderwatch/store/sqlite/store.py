"""`SqliteStore`: the embedded store, put together from its parts (one per file here)."""

from __future__ import annotations

from orderwatch.core.rate_limit import RateLimiter
from orderwatch.store.sqlite.claims import SqliteClaims
from orderwatch.store.sqlite.deliveries import SqliteDeliveries
from orderwatch.store.sqlite.pushes import SqlitePushes
from orderwatch.store.sqlite.reads import SqliteReads
from orderwatch.store.sqlite.sweeps import SqliteSweeps
from orderwatch.store.sqlite.writes import SqliteWrites


class SqliteStore(
    SqliteClaims, SqliteWrites, SqliteReads, SqliteDeliveries, SqlitePushes, SqliteSweeps
):
    """Store over one SQLite file. Open with `await SqliteStore.open(state_dir)`."""

    def shared_limiter(self, rate: float) -> RateLimiter | None:
        return None  # one daemon per embedded state: its own limiter is the only one
