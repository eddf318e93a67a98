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
# "sqlite-rows": SQLite as versions before 3.33 (or without JSON) run it, row by row.
BACKENDS = ["sqlite", "sqlite-rows", pytest.param("postgres", marks=pytest.mark.postgres)]


REQUIRE_POSTGRES = os.environ.get("ORDERWATCH_REQUIRE_POSTGRES") == "1"


def _pg_unavailable() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None when they can."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return None
    except psycopg.Error as e:
        return f"no PostgreSQL server at {PG_ADMIN.rsplit('@', 1)[-1]} ({type(e).__name__})"


def skip_without_postgres() -> None:
    """Skip the calling test when PostgreSQL cannot be used; fail instead when CI requires
    it (ORDERWATCH_REQUIRE_POSTGRES=1), so a broken CI database cannot pass as skipped."""
    reason = _pg_unavailable()
    if reason is None:
        return
    if REQUIRE_POSTGRES:
        pytest.fail(f"{reason}; ORDERWATCH_REQUIRE_POSTGRES=1 makes this a failure")
    pytest.skip(reason)


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """A fresh, empty database for one test; dropped afterwards."""
    skip_without_postgres()
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
        s = lite = await SqliteStore.open(tmp_path / "state", daemon=True, now=0.0)
        lite.one_statement = request.param == "sqlite"
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture(params=BACKENDS)
async def two_stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Store, Store]]:
    """Two store instances on the same state, as two processes (or replicas) would have."""
    if request.param == "postgres":
        from orderwatch.store.postgres import PostgresStore

        dsn = request.getfixturevalue("pg_dsn")
        a: Store = await PostgresStore.open(dsn)
        b: Store = await PostgresStore.open(dsn)
    else:
        a = await SqliteStore.open(tmp_path / "state", daemon=True, now=0.0)
        b = await SqliteStore.open(tmp_path / "state")
        for lite in (a, b):
            lite.one_statement = request.param == "sqlite"
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """A real SQLite store in tmp_path, opened as the daemon opens it."""
    s = await SqliteStore.open(tmp_path / "state", daemon=True, now=time.time())
    yield s
    await s.close()
