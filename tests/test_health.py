"""Readiness follows the store's health, writes included."""

from __future__ import annotations

import asyncio
import json
import resource
import signal
from pathlib import Path

from orderwatch.devtools.simulator import SimOptions, running_simulator
from orderwatch.store.sqlite import DB_NAME

from harness import API_KEY, free_port, http, spawn, write_config


async def _ready(base: str) -> tuple[int, dict[str, object]]:
    status, text = await http("GET", f"{base}/readyz")
    return status, json.loads(text)


async def _until_status(base: str, want: int, timeout: float = 20.0) -> dict[str, object]:
    """The child is another process: ask /readyz (each ask checks the store) until it says `want`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            status, body = await _ready(base)
            if status == want:
                return body
        except OSError:
            pass  # not listening yet
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"/readyz never answered {want}")
        await asyncio.sleep(0.1)


async def test_a_store_that_refuses_writes_makes_the_daemon_not_ready(tmp_path: Path) -> None:
    """With state_dir full, writes failed and POST /orders answered 503 while /readyz said
    ready and orderwatch_ready was 1. Here the daemon runs under a file size limit just above
    its database's size: its write-ahead log soon cannot grow, as on a full disk, while reads
    still work."""
    port = free_port()
    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        cfg = write_config(tmp_path, rs.base_url, admin={"listen": f"127.0.0.1:{port}"})
        add = await spawn("add", "-c", str(cfg), "O-BEFORE1")  # creates the database
        assert await add.wait() == 0
        limit = (tmp_path / "state" / DB_NAME).stat().st_size + 64 * 1024

        def full_disk() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        child = await spawn(
            "run", "-c", str(cfg), stderr=asyncio.subprocess.DEVNULL, preexec_fn=full_disk
        )
        base = f"http://127.0.0.1:{port}"
        try:
            body = await _until_status(base, 503, timeout=60)  # every ask writes a little
            assert "refuses writes" in str(body["reason"])
            _, metrics = await http("GET", f"{base}/metrics")
            assert "orderwatch_ready 0.0" in metrics
            status, _ = await http("POST", f"{base}/orders", json={"ids": ["O-FULL1"]})
            assert status == 503
        finally:
            child.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(child.wait(), 15) == 0
