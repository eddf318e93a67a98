"""Watchlist files: ingested at start, re-read when they change (checked every second) and on
SIGHUP. A bad line or an unreadable file is reported; everything else keeps working."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import structlog

from orderwatch.core.aio import wait_any
from orderwatch.core.pulse import Pulse
from orderwatch.intake.watchlist import ReadState, iter_watchlist

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


class Memory(Protocol):
    """Where each file's signature is remembered across restarts (the store's small facts),
    so an unchanged million-line watchlist is not read and re-inserted at every start."""

    async def get_meta(self, key: str) -> str | None: ...

    async def set_meta(self, key: str, value: str) -> None: ...


class Reader(Protocol):
    """How a file's IDs are read (`iter_watchlist`)."""

    def __call__(
        self, path: Path, state: ReadState, *, hold_tail: bool = False
    ) -> Generator[str, None, None]: ...


class WatchlistWatcher:
    def __init__(
        self,
        paths: Sequence[Path],
        ingest: Ingest,
        memory: Memory | None = None,
        *,
        read: Reader = iter_watchlist,
    ) -> None:
        self.paths = tuple(paths)
        self._ingest = ingest
        self._read_ids = read
        self._seen: dict[Path, tuple[int, int, int, int] | None] = {}
        self.store = memory
        self._stop: asyncio.Event | None = None  # set: a read stops at its next chunk
        self._held: dict[Path, tuple[int, int, int, int] | None] = {}  # unread last lines
        self._reported: dict[Path, tuple[str, ...]] = {}  # the problems last logged
        self._rescan: asyncio.Task[None] | None = None  # a reload's re-read of every file
        self._rescan_again = False  # a reload came during it: one more when it ends
        self.progress = Pulse()  # a chunk was ingested, or a scan ended (tests wait on it)

    def rescan(self) -> None:
        """A reload: read every watchlist again, in the background. A burst of reloads reads
        them at most twice (once more if one came during the read), not once each."""
        if self._rescan is not None and not self._rescan.done():
            self._rescan_again = True
        else:
            self._rescan = asyncio.get_running_loop().create_task(self._read_all())

    async def _read_all(self) -> None:
        again = True
        while again:
            self._rescan_again = False
            await self.scan(force=True)
            again = self._rescan_again

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
            # An unterminated last line is read once the file has stayed as it was for a
            # scan: then its writer is done with it, not half-way through an append.
            settled = sig is not None and self._held.pop(path, None) == sig
            n, state = await self._read(path, hold_tail=not settled)
            added += n
            if state is None:
                break  # stopping: the file stays unread, to be read again at the next start
            if state.held_tail:
                self._held[path] = sig
                continue
            if state.failed and sig is not None:
                continue  # it exists but could not be read (EMFILE, EIO): the next scan tries
            self._seen[path] = sig  # only now: a failed read is tried again at the next scan
            if self.store is not None and sig is not None:
                await self.store.set_meta(f"watchlist:{path}", json.dumps(sig))
        self.progress()
        return added

    async def _unchanged_since_last_run(
        self, path: Path, sig: tuple[int, int, int, int] | None
    ) -> bool:
        if self.store is None or sig is None:
            return False
        return await self.store.get_meta(f"watchlist:{path}") == json.dumps(sig)

    async def _read(self, path: Path, hold_tail: bool) -> tuple[int, ReadState | None]:
        """(IDs added, what the read met; None if it stopped part-way for a stop). The file
        streams in chunks, each parsed on a worker thread and stored by its own call: a
        million-line file is never one list, nor one store call that everyone else waits
        behind."""
        state = ReadState()
        ids = self._read_ids(path, state, hold_tail=hold_tail)
        read = added = 0
        parsing: asyncio.Future[list[str]] | None = None
        try:
            while True:
                parsing = asyncio.ensure_future(asyncio.to_thread(_take, ids, CHUNK))
                if not (chunk := await asyncio.shield(parsing)):
                    break
                read += len(chunk)
                added += await self._ingest(chunk)
                self.progress()
                if self._stop is not None and self._stop.is_set():
                    log.info("watchlist.interrupted", file=str(path), ids=read, new=added)
                    return added, None
        finally:
            if parsing is None or parsing.done():
                ids.close()
            else:  # cancelled while the thread is inside the generator: close it after
                parsing.add_done_callback(lambda f: _close_after(f, ids))
        self._report(path, state)
        if read:
            log.info("watchlist.read", file=str(path), ids=read, new=added)
        return added, state

    def _report(self, path: Path, state: ReadState) -> None:
        """A file's problems, when they differ from what was last said about it: a file
        that cannot be read is tried every scan, and says so once."""
        said = tuple(str(p) for p in state.problems)
        if said != self._reported.get(path, ()):
            for problem in said:
                log.warning("watchlist.problem", problem=problem)
        self._reported[path] = said

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


def _close_after(parsing: asyncio.Future[list[str]], ids: Generator[str, None, None]) -> None:
    if not parsing.cancelled():
        parsing.exception()  # retrieved: nobody else waits for it now
    ids.close()
