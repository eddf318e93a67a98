"""The embedded store: one SQLite file (WAL) under state_dir, owned by one daemon at a time.

All SQL runs on one dedicated thread with one connection, so the event loop never blocks on
disk and SQLite sees no concurrent use of a connection. Other processes (`orderwatch add`,
`status`, `replay`) open their own connection; WAL lets them read and write beside the daemon.

One file per concern, all sharing `SqliteConnection`: connection (thread, transactions,
recovery, meta, close), claims (orders in and out), writes (reschedule and release after a
poll), reads (counts and rows for status), deliveries (the outbox), sweeps (deferred
polls, named leases); store puts them together.
"""

from orderwatch.store.sqlite.connection import DB_NAME
from orderwatch.store.sqlite.store import SqliteStore
from orderwatch.store.sqlite.writes import QUEUED_WRITE_DELAY_S

__all__ = ["DB_NAME", "QUEUED_WRITE_DELAY_S", "SqliteStore"]
