"""Watchlist files: ingested at start, re-read when they change (checked every second) and on
SIGHUP. A bad line or an unreadable file is reported; everything else keeps working."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path

import structlog

from orderwatch.aio import wait_any
from orderwatch.errors import Problem
from orderwatch.store.base import Store
from orderwatch.watchlist import iter_watchlist

log = structlog.get_logger("orderwatch.watch")

Ingest = Callable[[Iterable[str]], Awaitable[int]]
SCAN_INTERVAL_S = 1.0


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class _Counted:
    """An iterator that counts what passes through it."""

    def __init__(self, it: Iterator[str]) -> None:
        self._it = it
        self.n = 0

    def __iter__(self) -> Iterator[str]:
        for item in self._it:
            self.n += 1
            yield item


class WatchlistWatcher:
    def __init__(self, paths: Sequence[Path], ingest: Ingest) -> None:
        self.paths = tuple(paths)
        self._ingest = ingest
        self._seen: dict[Path, tuple[int, int, int, int] | None] = {}
        # Where each file's signature is remembered across restarts, so an unchanged
        # million-line watchlist is not read and re-inserted at every start.
        self.store: Store | None = None

    def set_paths(self, paths: Sequence[Path]) -> None:
        """A reload changed the list: new files are read at the next scan."""
        self.paths = tuple(paths)

    async def scan(self, force: bool = False) -> int:
        """Read every file that changed since the last scan (all of them if `force`)."""
        added = 0
        for path in self.paths:
            sig = _signature(path)
            if path not in self._seen and await self._unchanged_since_last_run(path, sig):
                self._seen[path] = sig
            if not force and self._seen.get(path, ()) == sig:
                continue
            added += await self._read(path)
            self._seen[path] = sig  # only now: a failed read is tried again at the next scan
            if self.store is not None and sig is not None:
                await self.store.set_meta(f"watchlist:{path}", json.dumps(sig))
        return added

    async def _unchanged_since_last_run(
        self, path: Path, sig: tuple[int, int, int, int] | None
    ) -> bool:
        if self.store is None or sig is None:
            return False
        return await self.store.get_meta(f"watchlist:{path}") == json.dumps(sig)

    async def _read(self, path: Path) -> int:
        # The IDs stream from the file straight into the store's batched inserts (the store
        # runs the iterator on its own thread): a million-line file is never one list.
        problems: list[Problem] = []
        counted = _Counted(iter_watchlist(path, problems))
        added = await self._ingest(counted)
        for problem in problems:
            log.warning("watchlist.problem", problem=str(problem))
        if counted.n:
            log.info("watchlist.read", file=str(path), ids=counted.n, new=added)
        return added

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.scan()
            except Exception as e:  # a store hiccup must not end watching
                log.error("watchlist.scan_failed", error=str(e))
            await wait_any(stop, timeout=SCAN_INTERVAL_S)
