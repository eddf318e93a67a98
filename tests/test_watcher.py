"""The watchlist watcher (intake/watcher.py): files read at start, re-read on change, bad lines
reported, the rest counted; a half-written line, a failed read and a stop mid-file."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Iterable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from orderwatch.core.errors import StoreError
from orderwatch.devtools.simulator import SimOptions, running_simulator
from orderwatch.intake.watcher import WatchlistWatcher
from orderwatch.intake.watchlist import ReadState, iter_watchlist

from harness import API_KEY, changes_of, logged, running_daemon, settings_for, until


async def test_watchlists_read_reread_and_report(tmp_path: Path) -> None:
    """Valid IDs are tracked; hostile lines and a missing file are reported; appended IDs and
    a file created later are picked up without a restart."""
    wl1, wl2 = tmp_path / "a.txt", tmp_path / "b.txt"
    wl1.write_text("# orders\nO-W1\n../../etc/passwd\n\nO-W2  # trailing comment\nO W3\n")
    async with running_simulator(SimOptions(api_key=API_KEY, complete_after=3600)) as rs:
        settings = settings_for(tmp_path, rs.base_url, watchlists=[str(wl1), str(wl2)])
        with capture_logs() as logs:
            async with running_daemon(settings) as d:
                store = d.store
                assert store is not None

                async def tracked(*ids: str) -> bool:
                    return len(await store.get_orders(list(ids))) == len(ids)

                await until(lambda: tracked("O-W1", "O-W2"), *changes_of(d), timeout=10)
                with wl1.open("a") as f:
                    f.write("O-W4\n")
                await until(lambda: tracked("O-W4"), *changes_of(d), timeout=10)
                wl2.write_text("O-W5\n")
                await until(lambda: tracked("O-W5"), *changes_of(d), timeout=10)
                assert (await store.counts())["pending"] == 4
    problems = [e["problem"] for e in logs if e["event"] == "watchlist.problem"]
    assert f"{wl1}:3: invalid order id '../../etc/pa…'" in problems
    assert f"{wl1}:6: invalid order id 'O W3'" in problems
    assert f"{wl2}: cannot read watchlist: No such file or directory" in problems
    assert not list(tmp_path.glob("**/passwd"))


async def test_unchanged_watchlist_not_reread_after_restart(tmp_path: Path) -> None:
    """A restart does not read an unchanged watchlist again (its signature is remembered in
    the store); a changed one is read."""
    wl = tmp_path / "a.txt"
    wl.write_text("O-R1\nO-R2\n")
    async with running_simulator(SimOptions(api_key=API_KEY, complete_after=3600)) as rs:
        settings = settings_for(
            tmp_path, rs.base_url, watchlists=[str(wl)], polling={"initial_delay": "1h"}
        )
        for expect_read in (True, False):
            with capture_logs() as logs:
                async with running_daemon(settings) as d:
                    assert d.store is not None

                    async def scanned() -> bool:
                        return await d.store.get_meta(f"watchlist:{wl}") is not None  # type: ignore[union-attr]

                    await until(scanned, *changes_of(d))
                    assert d.watcher is not None
                    await d.watcher.scan()  # a full pass has certainly happened now
            reads = [e for e in logs if e["event"] == "watchlist.read"]
            assert bool(reads) is expect_read
        wl.write_text("O-R1\nO-R2\nO-R3\n")
        with logged() as (logs, line):
            async with running_daemon(settings) as d:

                async def read() -> bool:  # the log line comes after the IDs are stored
                    return any(e["event"] == "watchlist.read" for e in logs)

                await until(read, line)
                assert len(await d.store.get_orders(["O-R3"])) == 1  # type: ignore[union-attr]
        assert [e["new"] for e in logs if e["event"] == "watchlist.read"] == [1]


async def test_a_watchlist_whose_ingest_failed_is_read_again(tmp_path: Path) -> None:
    """A store error while a changed file was being ingested: the next scan reads it again
    (it was once marked read first, and its IDs waited for the next edit or a restart)."""
    wl = tmp_path / "w.txt"
    wl.write_text("O-R1\nO-R2\n")
    got: list[str] = []
    failures = [StoreError("state database: database is locked")]

    async def ingest(ids: Iterable[str]) -> int:
        if failures:
            raise failures.pop()
        got.extend(ids)
        return len(got)

    watcher = WatchlistWatcher([wl], ingest)
    with pytest.raises(StoreError):
        await watcher.scan()
    assert await watcher.scan() == 2 and got == ["O-R1", "O-R2"]
    assert await watcher.scan() == 0  # unchanged since it was read: not read again


@pytest.mark.slow
async def test_a_big_watchlist_shares_the_store_and_stops_with_the_daemon(tmp_path: Path) -> None:
    """A 400,000-line file goes in by chunks, each its own store call: the rest of the daemon
    (the scheduler, the watchdog's gauges) gets the store between them, and SIGTERM stops the
    ingest at the next chunk. It was one call: the store answered nobody else until the whole
    file was in, and shutdown waited for it. The file, not marked read, is read again at the
    next start."""
    wl = tmp_path / "big.txt"
    total = 400_000
    wl.write_text("".join(f"O-BIG{i}\n" for i in range(total)))
    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        settings = settings_for(
            tmp_path, rs.base_url, watchlists=[str(wl)], polling={"initial_delay": "1h"}
        )
        seen: list[int] = []
        async with running_daemon(settings) as d:
            store = d.store
            assert store is not None

            async def part_way() -> bool:
                seen.append((await store.counts())["pending"])
                return 0 < seen[-1] < total

            await until(part_way, *changes_of(d), timeout=30)
        stopped_at = seen[-1]
        async with running_daemon(settings) as d:
            again = d.store
            assert again is not None
            after_stop = (await again.counts())["pending"]

            async def all_in() -> bool:
                return (await again.counts())["pending"] == total

            await until(all_in, *changes_of(d), timeout=60)
    assert after_stop < total  # the first run stopped part-way and did not finish the file
    assert stopped_at <= after_stop


def _collector() -> tuple[list[str], Callable[[Iterable[str]], Awaitable[int]]]:
    got: list[str] = []

    async def ingest(ids: Iterable[str]) -> int:
        ids = list(ids)
        got.extend(ids)
        return len(ids)

    return got, ingest


class _MetaStore:
    """The two calls the watcher makes on its store."""

    def __init__(self) -> None:
        self.meta: dict[str, str] = {}

    async def get_meta(self, key: str) -> str | None:
        return self.meta.get(key)

    async def set_meta(self, key: str, value: str) -> None:
        self.meta[key] = value


async def test_a_half_written_last_line_waits_for_its_end(tmp_path: Path) -> None:
    """A scan that lands between two writes of an append ("O-12", then "3456\\n") must not
    take "O-12" for an ID; a last line without a newline is read once the file has stayed
    as it was for a scan."""
    wl = tmp_path / "w.txt"
    wl.write_bytes(b"O-1\n")
    got, ingest = _collector()
    watcher = WatchlistWatcher([wl], ingest)
    await watcher.scan()
    with wl.open("ab") as f:
        f.write(b"O-12")
        f.flush()
        await watcher.scan()
        f.write(b"3456\n")
    await watcher.scan()
    assert "O-12" not in got and "O-123456" in got
    with wl.open("ab") as f:
        f.write(b"O-END")  # and nothing more: a file that simply lacks its last newline
    await watcher.scan()
    assert "O-END" not in got
    await watcher.scan()
    assert got[-1] == "O-END"
    assert await watcher.scan() == 0 and got.count("O-END") == 1


async def test_a_file_that_could_not_be_read_is_read_at_the_next_scan(tmp_path: Path) -> None:
    """An error that leaves the file as it was (EMFILE at open, EIO part-way) is not taken
    for a read: the next scan reads the file, the store's memory of it is not written, and
    the error is logged once, not at every scan."""
    import errno
    import io

    from orderwatch.core.files import open_regular

    wl = tmp_path / "w.txt"
    wl.write_text("O-1\nO-2\n")
    got, ingest = _collector()
    store = _MetaStore()
    out_of_files = True

    def opener(path: Path) -> io.BufferedReader:
        if out_of_files:
            raise OSError(errno.EMFILE, "Too many open files")
        return open_regular(path)

    def read(
        path: Path, state: ReadState, *, hold_tail: bool = False
    ) -> Generator[str, None, None]:
        return iter_watchlist(path, state, hold_tail=hold_tail, open_file=opener)

    watcher = WatchlistWatcher([wl], ingest, store, read=read)
    with capture_logs() as logs:
        await watcher.scan()
        await watcher.scan()
    assert got == [] and store.meta == {}
    assert [e["problem"] for e in logs] == [f"{wl}: cannot read watchlist: Too many open files"]
    out_of_files = False
    await watcher.scan()
    assert got == ["O-1", "O-2"] and store.meta


async def test_a_stop_while_a_chunk_is_parsed_cancels_cleanly(tmp_path: Path) -> None:
    """The daemon's stop cancels the watcher while a worker thread is inside the file's
    generator (a slow disk): the task ends cancelled, with no "generator already executing"
    error, and the file is closed once the thread lets go of it."""
    import asyncio
    import threading

    wl = tmp_path / "w.txt"
    wl.write_text("O-1\nO-2\n")
    in_thread, release, closed = threading.Event(), threading.Event(), threading.Event()

    def slow_iter(
        path: Path, state: ReadState, *, hold_tail: bool = False
    ) -> Generator[str, None, None]:
        try:
            for order_id in iter_watchlist(path, state, hold_tail=hold_tail):
                in_thread.set()
                release.wait(5)
                yield order_id
        finally:
            closed.set()

    _, ingest = _collector()
    stop = asyncio.Event()
    watcher = WatchlistWatcher([wl], ingest, read=slow_iter)
    with capture_logs() as logs:
        task = asyncio.create_task(watcher.run(stop))
        await asyncio.to_thread(in_thread.wait, 5)
        stop.set()
        task.cancel()
        await asyncio.wait([task])
        release.set()
        assert await asyncio.to_thread(closed.wait, 5)  # the thread lets go: the file closes
    assert task.cancelled()
    assert not [e for e in logs if e["log_level"] == "error"]
