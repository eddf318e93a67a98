"""6. Steady running cost: `orderwatch run` as a child process, 5,000 orders that stay
PROCESSING (so every send is a real poll), at Runa's documented limit (5/s, 300 a minute) and
at 1,000/s: CPU share of a core, CPU per poll, and RSS at the start and end of the window
(growth would show a leak)."""

from __future__ import annotations

import asyncio
import signal
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import (
    API_KEY,
    Report,
    cpu_seconds,
    rss_mb,
    sim_stats,
    simulator_process,
    wakeups,
)
from bench.scale import spawn

ORDERS = 5000


async def steady(base: str, tmp: Path, rate: int, seconds: float) -> dict[str, float]:
    cfg = tmp / f"ow-{rate}.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "runa": {"base_url": base, "api_key": API_KEY},
                "rate_limit": {"requests_per_second": rate, "max_concurrency": 16},
                # per-order polling is what is costed: no list sweep standing in for it
                "polling": {"initial_delay": "0s", "max_interval": "1s", "sweep": "off"},
                "state_dir": str(tmp / f"state-{rate}"),
                "output_dir": str(tmp / f"orders-{rate}"),
                "admin": {"listen": None},
                "logging": {"format": "json", "level": "warning"},
                "watchlists": [str(tmp / "watchlist.txt")],
            }
        )
    )
    proc = await spawn(cfg)
    try:
        await asyncio.sleep(5)  # start-up, ingest, first window
        n0, c0, t0 = (await sim_stats(base))["count"], cpu_seconds(proc.pid), time.monotonic()
        rss0, w0 = rss_mb(proc.pid), wakeups(proc.pid)
        await asyncio.sleep(seconds)
        n1, c1, t1 = (await sim_stats(base))["count"], cpu_seconds(proc.pid), time.monotonic()
        rss1, w1 = rss_mb(proc.pid), wakeups(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
    polls, cpu = n1 - n0, c1 - c0
    return {
        "rate": polls / (t1 - t0),
        "cpu_pct": cpu / (t1 - t0) * 100,
        "ms_per_poll": cpu / max(polls, 1) * 1000,
        "wakeups_per_poll": (w1 - w0) / max(polls, 1),
        "rss0": rss0,
        "rss1": rss1,
    }


async def run(report: Report, smoke: bool) -> None:
    seconds = 10.0 if smoke else 60.0
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "watchlist.txt").write_text("".join(f"O-STEADY{i:05d}\n" for i in range(ORDERS)))
        async with simulator_process("--complete-after", "100d") as base:
            for rate in (5, 1000):
                r = await steady(base, tmp, rate, seconds)
                at = f"at {rate}/s ({r['rate']:.1f} polls/s, {seconds:.0f} s)"
                report.add("steady", f"CPU % of a core {at}", r["cpu_pct"])
                report.add("steady", f"CPU ms per poll {at}", r["ms_per_poll"])
                report.add("steady", f"event loop wakeups per poll {at}", r["wakeups_per_poll"])
                report.add(
                    "steady", f"RSS MB start / end {at}", f"{r['rss0']:.1f} / {r['rss1']:.1f}"
                )
