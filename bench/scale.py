"""3. Scale: a million pending orders. Ingest time from a watchlist, peak RSS, CPU while none
is due (beside an empty event loop that wakes as often: the machine's price for the wakeups
alone), and time from start to ready with that state on disk. The daemon is a child process."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

from bench.common import API_KEY, REPO, Report, cpu_seconds, free_port, peak_rss_mb, wakeups


def pending(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            row = con.execute("SELECT n FROM order_counts WHERE state = 'pending'").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row else 0


async def ready(port: int) -> bool:
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/readyz") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


async def spawn(cfg: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orderwatch",
        "run",
        "-c",
        str(cfg),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


_EMPTY_LOOP = """
import asyncio, sys, time
from orderwatch.core import aio
async def main(per_s, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep(1 / per_s)

aio.run(main(float(sys.argv[1]), float(sys.argv[2])))
"""


async def empty_loop_cpu(per_s: float, seconds: float) -> float:
    """CPU % of a core of a child whose event loop (the daemon's kind) only wakes `per_s`
    times a second: on a VM each wakeup has a price of its own, and this is it."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _EMPTY_LOOP, str(per_s), str(seconds + 2), env=env
    )
    await asyncio.sleep(1)  # past interpreter start-up
    c0 = cpu_seconds(proc.pid)
    await asyncio.sleep(seconds)
    cpu = cpu_seconds(proc.pid) - c0
    await proc.wait()
    return cpu / seconds * 100


async def run(report: Report, smoke: bool) -> None:
    n = 100_000 if smoke else 1_000_000
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        wl = tmp / "watchlist.txt"
        with wl.open("w") as f:
            f.writelines(f"O-SCALE{i:09d}\n" for i in range(n))
        port = free_port()
        cfg = tmp / "orderwatch.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "runa": {"base_url": "http://127.0.0.1:9/v2", "api_key": API_KEY},
                    "polling": {"initial_delay": "1h", "sweep": "off"},  # idle: no list pages
                    "watchlists": [str(wl)],
                    "state_dir": str(tmp / "state"),
                    "output_dir": str(tmp / "orders"),
                    "admin": {"listen": f"127.0.0.1:{port}"},
                    "logging": {"format": "json", "level": "warning"},
                }
            )
        )
        db = tmp / "state" / "orderwatch.sqlite3"
        t0 = time.monotonic()
        proc = await spawn(cfg)
        while pending(db) < n:
            await asyncio.sleep(0.1)
        ingest = time.monotonic() - t0
        await asyncio.sleep(3)  # let the post-ingest work settle
        c0, w0 = cpu_seconds(proc.pid), wakeups(proc.pid)
        await asyncio.sleep(10)
        idle = (cpu_seconds(proc.pid) - c0) / 10 * 100
        idle_wakeups = (wakeups(proc.pid) - w0) / 10
        rss = peak_rss_mb(proc.pid)
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        t1 = time.monotonic()
        proc = await spawn(cfg)
        while not await ready(port):
            await asyncio.sleep(0.05)
        to_ready = time.monotonic() - t1
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
    label = f"{n:,} orders"
    report.add("scale", f"ingest {label} from a watchlist, s", ingest, "<= 10 s", ingest <= 10)
    report.add("scale", f"peak RSS with {label}, MB", rss, "<= 300 MB", rss <= 300)
    report.add("scale", "CPU while none is due, % of a core", idle, "< 1 %", idle < 1)
    report.add("scale", "event loop wakeups/s while none is due", idle_wakeups)
    floor = await empty_loop_cpu(max(idle_wakeups, 0.1), 10.0)
    report.add(
        "scale",
        "the floor: an empty loop waking as often, %",
        floor,
        note="what the machine charges for the wakeups alone",
    )
    report.add(
        "scale", f"start to ready with {label} on disk, s", to_ready, "<= 5 s", to_ready <= 5
    )
