"""The embedded SQLite store: a state file from another orderwatch version (older is brought
up to date, newer is refused), a claim raced by another store on the same file, and a full disk
as SQLite meets it (the error says so, and nothing accepted before is lost)."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from orderwatch.core.errors import StoreError
from orderwatch.store.base import Claim
from orderwatch.store.sqlite import DB_NAME, SqliteStore
from orderwatch.store.sqlite.claims import _TAKE_CLAIMED


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


class _RacedBefore:
    """A connection that lets `race()` run once, just before the claim's UPDATE."""

    def __init__(self, db: sqlite3.Connection, race: Callable[[], object]) -> None:
        self._db = db
        self._race: Callable[[], object] | None = race

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql is _TAKE_CLAIMED and self._race is not None:
            race, self._race = self._race, None
            race()
        return self._db.execute(sql, *args)


async def test_a_claim_raced_between_its_select_and_update_takes_only_what_it_leased(
    tmp_path: Path,
) -> None:
    """The claim's SELECT and UPDATE are two transactions (fewer GIL rounds). Another store on
    the same file that claims in between must not get the same orders: the UPDATE takes a row
    only at the fence the SELECT saw, and the claim returns only the rows it took."""
    a = await SqliteStore.open(tmp_path, now=1.0)
    b = await SqliteStore.open(tmp_path, now=1.0)
    loop = asyncio.get_running_loop()
    try:
        await a.add_orders([f"O-{i}" for i in range(6)], 1.0, 1.0)
        got_b: list[Claim] = []

        def b_claims() -> None:  # on a's thread, while the event loop waits for a's claim
            got_b.extend(
                asyncio.run_coroutine_threadsafe(b.claim_due(2.0, 3, "b", 60.0), loop).result(10)
            )

        with a.connection_replaced(cast(sqlite3.Connection, _RacedBefore(a.db, b_claims))):
            got_a = await a.claim_due(2.0, 5, "a", 60.0)
        assert [c.order_id for c in got_b] == ["O-0", "O-1", "O-2"]
        assert [c.order_id for c in got_a] == ["O-3", "O-4"]
        for store, claims in ((a, got_a), (b, got_b)):
            assert all([await store.holds(c) for c in claims])
        assert [c.order_id for c in await a.claim_due(2.0, 5, "a", 60.0)] == ["O-5"]
    finally:
        await a.close()
        await b.close()


_CHILD = """
import asyncio, resource, signal, sys, time
from pathlib import Path
from orderwatch.core.errors import StoreError
from orderwatch.store.sqlite import SqliteStore

async def main(state: Path) -> None:
    store = await SqliteStore.open(state)
    await store.add_orders(["O-BEFORE"], time.time(), time.time())
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = max(f.stat().st_size for f in state.iterdir()) + 64 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    ids = [f"O-{i:06d}" for i in range(20_000)]
    try:
        await store.add_orders(ids, time.time(), time.time())
        print("no error")
    except StoreError as e:
        print("error:", e)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    print("after:", await store.add_orders(ids, time.time(), time.time()), await store.counts())
    await store.close()

asyncio.run(main(Path(sys.argv[1])))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
def test_a_full_disk_is_reported_as_one_and_loses_nothing(tmp_path: Path) -> None:
    """SQLite rolls a transaction back by itself when a write fails for want of room; the
    store's own ROLLBACK then failed, and its error ("cannot rollback - no transaction is
    active") replaced the one that said what happened. The store works again once there is
    room, with nothing lost."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "error:" in out and "cannot rollback" not in out, out
    assert "disk I/O error" in out or "database or disk is full" in out, out
    assert "after: 20000 {'pending': 20001" in out, out
