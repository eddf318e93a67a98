"""Shared fixtures: real stores on real files (and PostgreSQL where a server answers)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orderwatch.store.base import Store
from orderwatch.store.sqlite import SqliteStore

BACKENDS = ["sqlite"]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Every backend, fresh and empty, opened as the daemon opens it."""
    s = await SqliteStore.open(tmp_path / "state", daemon=True, now=0.0)
    try:
        yield s
    finally:
        await s.close()
