"""Watchlist files: ingested at start, re-read when they change (checked every second) and on
SIGHUP. A bad line or an unreadable file is reported; everything else keeps working."""

from __future__ import annotations

import asyncio
import itertools
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
CHUNK = 20_000  # IDs a store call: the scheduler and the watchdog get the store in between


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
        # Where each file's signature is remembered across restarts, so an unchanged
        # million-line watchlist is not read and re-inserted at every start.
        self.store: Store | None = None
        self._stop: asyncio.Event | None = None  # set: a read stops at its next chunk

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
            n, whole = await self._read(path)
            added += n
            if not whole:
                break  # stopping: the file stays unread, to be read again at the next start
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

    async def _read(self, path: Path) -> tuple[int, bool]:
        """(IDs added, whether the whole file was read). The file streams in chunks, each
        parsed on a worker thread and stored by its own call: a million-line file is never
        one list, nor one store call that everyone else waits behind."""
        problems: list[Problem] = []
        ids = iter_watchlist(path, problems)
        read = added = 0
        try:
            while chunk := await asyncio.to_thread(_take, ids, CHUNK):
                read += len(chunk)
                added += await self._ingest(chunk)
                if self._stop is not None and self._stop.is_set():
                    log.info("watchlist.interrupted", file=str(path), ids=read, new=added)
                    return added, False
        finally:
            ids.close()
        for problem in problems:
            log.warning("watchlist.problem", problem=str(problem))
        if read:
            log.info("watchlist.read", file=str(path), ids=read, new=added)
        return added, True

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        while not stop.is_set():
            try:
                await self.scan()
            except Exception as e:  # a store hiccup must not end watching
                log.error("watchlist.scan_failed", error=str(e))
            await wait_any(stop, timeout=SCAN_INTERVAL_S)


def _take(it: Iterator[str], n: int) -> list[str]:
    return list(itertools.islice(it, n))
