"""`PostgresStore`: the shared store, put together from its parts (one per file here)."""

from __future__ import annotations

from orderwatch.core.rate_limit import RateLimiter
from orderwatch.store.cluster_limiter import PostgresLimiter
from orderwatch.store.postgres.claims import PostgresClaims
from orderwatch.store.postgres.deliveries import PostgresDeliveries
from orderwatch.store.postgres.pushes import PostgresPushes
from orderwatch.store.postgres.reads import PostgresReads
from orderwatch.store.postgres.sweeps import PostgresSweeps
from orderwatch.store.postgres.writes import PostgresWrites


class PostgresStore(
    PostgresClaims,
    PostgresWrites,
    PostgresReads,
    PostgresDeliveries,
    PostgresPushes,
    PostgresSweeps,
):
    """Store over one PostgreSQL database. Open with `await PostgresStore.open(dsn)`."""

    def shared_limiter(self, rate: float) -> RateLimiter | None:
        """The limiter every replica shares (the daemon uses it instead of a local one)."""
        return PostgresLimiter(self.pool, rate)
