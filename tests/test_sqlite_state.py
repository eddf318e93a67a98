"""An embedded state file from another orderwatch version: older is brought up to date,
newer is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from orderwatch.errors import StoreError
from orderwatch.store.sqlite import DB_NAME, SqliteStore


async def test_a_state_file_from_before_the_counts_table_counts_right(tmp_path: Path) -> None:
    """order_counts came after the first release, with the same schema version. Opening an
    older file seeded every count at 0 whatever the orders were, and each final then took
    one off: status, /metrics and systemd STATUS showed negative pending counts for good."""
    store = await SqliteStore.open(tmp_path, daemon=True, now=1.0)
    await store.add_orders(["O-1", "O-2", "O-3"], 1.0, 1.0)
    await store.close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("DROP TABLE order_counts")  # as the file was before the table existed
    db.commit()
    db.close()
    store = await SqliteStore.open(tmp_path, daemon=True, now=2.0)
    try:
        assert (await store.counts())["pending"] == 3
    finally:
        await store.close()


async def test_a_state_file_from_a_newer_orderwatch_is_refused(tmp_path: Path) -> None:
    """Written by a newer orderwatch (a downgrade): refused, as the PostgreSQL store does,
    not written to with a schema this version does not know."""
    await (await SqliteStore.open(tmp_path)).close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer"):
        await SqliteStore.open(tmp_path)
