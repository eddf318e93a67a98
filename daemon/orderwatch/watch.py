"""Watchlist files: ingested at start, re-read when they change (checked every second) and on
SIGHUP. A bad line or an unreadable file is reported; everything else keeps working."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path

import structlog

from orderwatch.aio import wait_any
from orderwatch.watchlist import read_watchlist

log = structlog.get_logger("orderwatch.watch")

Ingest = Callable[[Iterable[str]], Awaitable[int]]
SCAN_INTERVAL_S = 1.0


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class WatchlistWatcher:
    def __init__(self, paths: Sequence[Path], ingest: Ingest) -> None:
        self.paths = tuple(paths)
        self._ingest = ingest
        self._seen: dict[Path, tuple[int, int, int, int] | None] = {}

    def set_paths(self, paths: Sequence[Path]) -> None:
        """A reload changed the list: new files are read at the next scan."""
        self.paths = tuple(paths)

    async def scan(self, force: bool = False) -> int:
        """Read every file that changed since the last scan (all of them if `force`)."""
        added = 0
        for path in self.paths:
            sig = _signature(path)
            if not force and path in self._seen and self._seen[path] == sig:
                continue
            self._seen[path] = sig
            added += await self._read(path)
        return added

    async def _read(self, path: Path) -> int:
        result = await asyncio.to_thread(read_watchlist, path)
        for problem in result.problems:
            log.warning("watchlist.problem", problem=str(problem))
        if not result.ids:
            return 0
        added = await self._ingest(result.ids)
        log.info("watchlist.read", file=str(path), ids=len(result.ids), new=added)
        return added

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.scan()
            except Exception as e:  # a store hiccup must not end watching
                log.error("watchlist.scan_failed", error=str(e))
            await wait_any(stop, timeout=SCAN_INTERVAL_S)
