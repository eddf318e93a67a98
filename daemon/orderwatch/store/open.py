"""Pick and open the store the settings name: embedded SQLite, or PostgreSQL via state_dsn."""

from __future__ import annotations

from contextlib import AsyncExitStack

from orderwatch.config.models import Settings
from orderwatch.store.base import Store
from orderwatch.store.lock import DaemonLock, prepare_state_dir
from orderwatch.store.sqlite import DB_NAME, SqliteStore


async def open_store(
    settings: Settings, stack: AsyncExitStack, *, daemon: bool, now: float, role: str = "run"
) -> Store:
    """Open the store; closed when `stack` unwinds. `daemon=True` takes the one-daemon lock
    for embedded state as `role` (raises StateLockedError if another daemon holds it)."""
    if settings.state_dsn is not None:
        from orderwatch.store.postgres import PostgresStore

        pg = await PostgresStore.open(settings.state_dsn.get_secret_value())
        stack.push_async_callback(pg.close)
        return pg
    if daemon:
        prepare_state_dir(settings.state_dir)
        lock = DaemonLock(settings.state_dir)
        lock.acquire(role)
        stack.callback(lock.release)
    store = await SqliteStore.open(settings.state_dir, daemon=daemon, now=now)
    stack.push_async_callback(store.close)
    return store


def state_exists(settings: Settings) -> bool:
    """Whether anything was ever stored there (PostgreSQL: assumed, the DSN names it)."""
    return settings.state_dsn is not None or (settings.state_dir / DB_NAME).exists()


def daemon_running(settings: Settings) -> bool:
    """True when a daemon holds the embedded state's lock (PostgreSQL: always shared, False)."""
    if settings.state_dsn is not None:
        return False
    return DaemonLock(settings.state_dir).is_held_elsewhere()


def last_holder_role(settings: Settings) -> str | None:
    """Who held the embedded state last (`run` or `wait`); None for PostgreSQL or unknown."""
    if settings.state_dsn is not None:
        return None
    return DaemonLock(settings.state_dir).last_role()
