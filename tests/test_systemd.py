"""systemd integration: a real child process speaks the notify protocol (READY, STATUS, WATCHDOG, STOPPING, RELOADING) on a real datagram socket."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import pytest

from orderwatch.simulator import SimOptions, running_simulator

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
