"""The shared store: one PostgreSQL database for several replicas.

Driver: psycopg 3 (async, with psycopg_pool), chosen over asyncpg for libpq's standard DSN,
`PG*` environment and `sslmode`/certificate handling (what operators already configure),
`psycopg[binary]` wheels with no compiler, and one driver for sync and async use (the tests and
tools use the sync API on the same DSN).

Work is shared with `FOR UPDATE SKIP LOCKED` claims that set a lease (next_poll_at moves to the
lease's end: a visibility timeout) and bump a fencing token; every write acting on a claim names
the token, so a replica that lost its lease (paused, partitioned, killed) writes nothing. The
semantics are the SQLite store's, statement for statement. The DSN may hold a password: it never
appears in logs or errors. A lost connection costs one failed call (StoreError); the pool
reconnects and the daemon retries on its next pass.

The same files as the embedded store (orderwatch.store.sqlite), all sharing
`PostgresConnection`: connection (pool, session settings, migration, meta, close), claims,
writes, reads, deliveries, sweeps (deferred polls, leases); store puts them together.
"""

from orderwatch.store.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
