"""Shared fixtures: real stores on real files, and on PostgreSQL where a server answers.

PostgreSQL tests use 127.0.0.1:5432 (user postgres, trust auth; override with
ORDERWATCH_TEST_PG). Where no server answers they are skipped, unless
ORDERWATCH_REQUIRE_POSTGRES=1 (set by CI), where that is a failure."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from orderwatch.store.base import Store
from orderwatch.store.sqlite import SqliteStore

PG_ADMIN = os.environ.get("ORDERWATCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _pg_reachable() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return None
    except Exception as e:
        return f"no PostgreSQL at {PG_ADMIN.rsplit('@', 1)[-1]}: {type(e).__name__}"


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """A fresh, empty database for one test; dropped afterwards."""
    reason = _pg_reachable()
    if reason is not None:
        if os.environ.get("ORDERWATCH_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason} (ORDERWATCH_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)
    import psycopg

    name = f"orderwatch_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Every backend, fresh and empty, opened as the daemon opens it."""
    if request.param == "postgres":
        from orderwatch.store.postgres import PostgresStore

        s: Store = await PostgresStore.open(request.getfixturevalue("pg_dsn"))
    else:
        s = await SqliteStore.open(tmp_path / "state", daemon=True, now=0.0)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """A real SQLite store in tmp_path, opened as the daemon opens it."""
    s = await SqliteStore.open(tmp_path / "state", daemon=True, now=time.time())
    yield s
    await s.close()
