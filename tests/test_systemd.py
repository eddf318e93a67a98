"""systemd integration: a real child process speaks the notify protocol (READY, STATUS, WATCHDOG, STOPPING, RELOADING) on a real datagram socket."""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
from pathlib import Path

import pytest

from orderwatch.devtools.simulator import SimOptions, running_simulator

from harness import API_KEY, child_env, write_config


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    async def until(self, prefix: str, timeout: float = 20) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for m in self.messages:
                if any(line.startswith(prefix) for line in m.splitlines()):
                    return m
            if loop.time() > deadline:
                raise AssertionError(f"no {prefix} in {self.messages}")
            try:
                self.messages.append((await loop.sock_recv(self.sock, 4096)).decode())
            except BlockingIOError:
                await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_notify_protocol_with_a_child_daemon(tmp_path: Path) -> None:
    """READY=1 after start, STATUS= with counts, WATCHDOG=1 at half WATCHDOG_USEC,
    RELOADING=1 with MONOTONIC_USEC on SIGHUP, STOPPING=1 on SIGTERM, then exit 0."""
    sock = NotifySocket(tmp_path / "notify.sock")
    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        cfg = write_config(tmp_path, rs.base_url)
        env = {
            **child_env(),
            "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
            "WATCHDOG_USEC": "2000000",
        }
        import sys

        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orderwatch",
            "run",
            "-c",
            str(cfg),
            env=env,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await sock.until("READY=1")
            assert "pending 0" in await sock.until("STATUS=")
            await sock.until("WATCHDOG=1")
            proc.send_signal(signal.SIGHUP)
            reloading = await sock.until("RELOADING=1")
            assert "MONOTONIC_USEC=" in reloading
            proc.send_signal(signal.SIGTERM)
            await sock.until("STOPPING=1")
            assert await asyncio.wait_for(proc.wait(), 15) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            sock.sock.close()


@pytest.mark.slow
async def test_watchdog_is_fed_while_the_store_hangs(tmp_path: Path) -> None:
    """A store that hangs (another process holds SQLite's write lock; PostgreSQL down or a
    long `LOCK TABLE`) is reported, not a stalled daemon: the event loop still runs. Each
    claim waited 10 s for the lock, the scheduler's heartbeat went stale after 8 s and the
    pings stopped, so systemd's watchdog would have killed a daemon that was only waiting."""
    import sqlite3
    import sys
    import time

    from orderwatch.store.sqlite import DB_NAME

    sock = NotifySocket(tmp_path / "notify.sock")
    async with running_simulator(SimOptions(api_key=API_KEY, complete_after=3600.0)) as rs:
        polling = {"initial_delay": "0s", "max_interval": "200ms"}
        cfg = write_config(tmp_path, rs.base_url, polling=polling, watchlists=[])
        env = {
            **child_env(),
            "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
            "WATCHDOG_USEC": "2000000",
        }
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "orderwatch", "run", "-c", str(cfg)),
            env=env,
            stderr=asyncio.subprocess.DEVNULL,
        )
        blocker = None
        try:
            await sock.until("READY=1")
            add = [sys.executable, "-m", "orderwatch", "add", "-c", str(cfg), "O-HANG1", "O-HANG2"]
            adder = await asyncio.create_subprocess_exec(*add, env=child_env())
            assert await adder.wait() == 0
            await asyncio.sleep(1.0)  # polled a few times
            blocker = sqlite3.connect(tmp_path / "state" / DB_NAME, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            loop = asyncio.get_running_loop()
            pings = [time.monotonic()]  # the window's start, then every ping in it
            end = loop.time() + 14.0
            while (left := end - loop.time()) > 0:
                try:
                    data = await asyncio.wait_for(loop.sock_recv(sock.sock, 4096), left)
                except TimeoutError:
                    break
                if "WATCHDOG=1" in data.decode().splitlines():
                    pings.append(time.monotonic())
            pings.append(time.monotonic())  # and its end
            gaps = [round(b - a, 1) for a, b in itertools.pairwise(pings)]
            assert max(gaps) < 2.0, f"gaps between pings over 14 s: {gaps}"
        finally:
            if blocker is not None:
                blocker.execute("ROLLBACK")
                blocker.close()
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            sock.sock.close()
