"""A full disk, as SQLite meets it: the error says so, and nothing accepted before is lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Run in a child: the file size limit (RLIMIT_FSIZE, the stand-in for a full disk that needs
# no mount: writes past it fail with EFBIG, which SQLite reports as a disk I/O error, where
# ENOSPC is "database or disk is full") is per process.
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
