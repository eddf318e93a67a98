"""1. Rate fidelity: 5,000 orders always PROCESSING; achieved rate and the busiest second;
and the busiest second at a low rate under connection resets and event-loop stalls."""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path

from bench.common import Report, sim_stats, simulator_process
from bench.inproc import daemon, settings


async def one(rate: int, seconds: float, report: Report) -> None:
    async with simulator_process("--complete-after", "100d") as base:
        with tempfile.TemporaryDirectory() as tmp:
            s = settings(
                Path(tmp),
                base,
                rate_limit={
                    "requests_per_second": rate,
                    "max_concurrency": min(64, max(4, rate // 10)),
                },
                # per-order GETs are what is measured: no list sweep standing in for them
                polling={
                    "initial_delay": "0s",
                    "max_interval": "10ms",
                    "jitter": 0,
                    "sweep": "off",
                },
            )
            async with daemon(s) as d:
                await d.add_orders([f"O-RATE{i:05d}" for i in range(5000)])
                await asyncio.sleep(2.0)  # past the start-up window and the ramp
                c0, t0 = (await sim_stats(base))["count"], time.monotonic()
                await asyncio.sleep(seconds)
                c1, t1 = (await sim_stats(base))["count"], time.monotonic()
            stats = await sim_stats(base)
    achieved = (c1 - c0) / (t1 - t0)
    busiest = int(stats["max_in_window"])
    report.add(
        "rate",
        f"achieved at {rate}/s (share of setting)",
        achieved / rate,
        ">= 0.97",
        achieved / rate >= 0.97,
        f"{achieved:.1f}/s",
    )
    report.add("rate", f"busiest 1 s window at {rate}/s", busiest, f"<= {rate}", busiest <= rate)


async def stalled(seconds: float, report: Report) -> None:
    """5/s while half the connections are reset and the event loop stalls for up to 100 ms
    now and then (as a slow in-process callback or a GC pass would): a GET whose new
    connection opens during a stall leaves late, and must still count when it leaves."""
    rate = 5
    async with simulator_process("--complete-after", "100d", "--rate-reset", "0.5") as base:
        with tempfile.TemporaryDirectory() as tmp:
            s = settings(
                Path(tmp),
                base,
                rate_limit={"requests_per_second": rate, "max_concurrency": 4},
                polling={
                    "initial_delay": "0s",
                    "max_interval": "200ms",
                    "jitter": 0.1,
                    "sweep": "off",
                },
                runa={"timeout": "2s"},
            )
            rng = random.Random(1)
            async with daemon(s) as d:
                await d.add_orders([f"O-STALL{i:03d}" for i in range(200)])
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    await asyncio.sleep(rng.uniform(0.0, 0.3))
                    time.sleep(rng.uniform(0.0, 0.1))  # block the loop, as a stall does
            stats = await sim_stats(base)
    busiest = int(stats["max_in_window"])
    report.add(
        "rate",
        f"busiest 1 s window at {rate}/s, 50% resets, loop stalls <= 100 ms",
        busiest,
        f"<= {rate}",
        busiest <= rate,
        f"{stats['count']} GETs in {seconds:.0f} s",
    )


async def run(report: Report, smoke: bool) -> None:
    for rate in (10, 100) if smoke else (10, 100, 1000):
        await one(rate, 3.0 if smoke else 10.0, report)
    await stalled(5.0 if smoke else 60.0, report)
