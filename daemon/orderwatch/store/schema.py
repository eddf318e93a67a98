"""Portable SQL for the store: one schema both backends create (types chosen to mean the same
in SQLite and PostgreSQL)."""

from __future__ import annotations

SCHEMA_VERSION = 1

TABLES = [
    """CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS orders (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        added_at DOUBLE PRECISION NOT NULL,
        next_poll_at DOUBLE PRECISION,
        lease_owner TEXT,
        fence BIGINT NOT NULL DEFAULT 0,
        polls INTEGER NOT NULL DEFAULT 0,
        error_streak INTEGER NOT NULL DEFAULT 0,
        first_404_at DOUBLE PRECISION,
        last_error TEXT,
        last_body BYTEA,
        final_status TEXT,
        finished_at DOUBLE PRECISION,
        found_by TEXT)""",
    """CREATE INDEX IF NOT EXISTS orders_due ON orders (next_poll_at)
        WHERE state = 'pending'""",
    """CREATE INDEX IF NOT EXISTS orders_oldest ON orders (added_at)
        WHERE state = 'pending'""",
    # The status page's recent finals and dead deliveries: a few rows, never a scan.
    """CREATE INDEX IF NOT EXISTS orders_finished ON orders (finished_at)
        WHERE finished_at IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS order_counts (
        state TEXT PRIMARY KEY,
        n BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS events (
        event_id TEXT PRIMARY KEY,
        order_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        body BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS events_order ON events (order_id)",
    """CREATE TABLE IF NOT EXISTS deliveries (
        event_id TEXT NOT NULL,
        sink TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION,
        lease_owner TEXT,
        fence BIGINT NOT NULL DEFAULT 0,
        last_outcome TEXT,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (event_id, sink))""",
    """CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (sink, next_attempt_at)
        WHERE state = 'pending'""",
    """CREATE INDEX IF NOT EXISTS deliveries_dead ON deliveries (updated_at)
        WHERE state IN ('dead', 'disabled')""",
    # Runa's pushes, by Svix message id: a retry of one is a duplicate (store/pushes.py).
    """CREATE TABLE IF NOT EXISTS pushes (
        push_id TEXT PRIMARY KEY,
        order_id TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS pushes_received ON pushes (received_at)",
    "CREATE INDEX IF NOT EXISTS pushes_order ON pushes (order_id)",
]

ORDER_STATES = ("pending", "final", "expired", "not_found")
# The columns of an `OrderRow`, in its order.
ORDER_ROW = (
    "id, state, added_at, polls, error_streak, next_poll_at, last_error, final_status, finished_at"
)

# Columns added since a schema was first created: each backend adds the missing ones at open
# (older orderwatch versions read the tables by column name, so none needs a new version).
ADDED_COLUMNS = [
    ("orders", "found_by", "TEXT"),  # how the final was found: poll, sweep or push
]

# order_counts is kept in step by add_orders and finish, in their own transactions, so counting
# a million orders is one small read, not a scan (status, metrics and systemd STATUS ask often).
# A missing row is seeded from the orders themselves (a file from before the table existed
# has orders); a row that exists costs no count.
SEED_COUNTS = [
    f"INSERT INTO order_counts(state, n)"
    f" SELECT '{s}', (SELECT COUNT(*) FROM orders WHERE state = '{s}')"
    f" WHERE NOT EXISTS (SELECT 1 FROM order_counts WHERE state = '{s}')"
    f" ON CONFLICT(state) DO NOTHING"
    for s in ORDER_STATES
]
# "disabled" (a 410 answer, before 410 became an ordinary failure) is only in older databases;
# `replay` makes such a delivery pending again.
DELIVERY_STATES = ("pending", "delivered", "dead", "disabled")
