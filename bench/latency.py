"""4. Detection latency against request budget: orders complete at random times; p50/p99 from
completion to webhook receipt and GETs per order, beside fixed-interval polling given the
same number of GETs (a second real run, not a formula)."""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Report, sim_post, sim_stats, simulator_process
from bench.inproc import daemon, settings
from orderwatch.devtools.receiver import Receiver, running_receiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def one_run(polling: dict[str, Any], delays: dict[str, float]) -> tuple[list[float], float]:
    """Returns (latencies from completion to webhook receipt, GETs per order)."""
    async with simulator_process("--complete-after", "100d") as base:
        receiver = Receiver(SECRET)
        async with running_receiver(receiver) as url:
            with tempfile.TemporaryDirectory() as tmp:
                s = settings(
                    Path(tmp),
                    base,
                    rate_limit={"requests_per_second": 200, "max_concurrency": 16},
                    polling=polling,
                    webhooks=[{"url": url, "secret": SECRET}],
                )
                async with daemon(s) as d:
                    t0 = time.monotonic()
                    for delay in sorted(set(delays.values())):
                        ids = [i for i, v in delays.items() if v == delay]
                        await sim_post(base, "/_sim/orders", {"ids": ids, "complete_after": delay})
                    await d.add_orders(list(delays))
                    while len({e.order_id for e in receiver.events}) < len(delays):
                        await asyncio.sleep(0.05)
                gets = (await sim_stats(base))["count"]
    first: dict[str, float] = {}
    for e in receiver.events:
        first.setdefault(e.order_id, e.received_at)
    lat = [first[i] - (t0 + delays[i]) for i in delays]
    return lat, gets / len(delays)


async def run(report: Report, smoke: bool) -> None:
    """Two shapes of PROCESSING time: uniform, and log-uniform (most orders fast, a long
    tail: closer to what Runa's examples show, 1 s to tens of minutes)."""
    n, horizon = (40, 8.0) if smoke else (200, 40.0)
    backoff = {"initial_delay": "1s", "backoff_factor": 1.5, "max_interval": "10s", "jitter": 0.1}
    for shape in ("uniform", "log-uniform"):
        rng = random.Random(42)
        if shape == "uniform":
            draw = [rng.uniform(0.5, horizon) for _ in range(n)]
        else:
            draw = [math.exp(rng.uniform(math.log(0.5), math.log(horizon))) for _ in range(n)]
        delays = {f"O-LAT{i:04d}": round(d, 2) for i, d in enumerate(draw)}
        lat, gets = await one_run(backoff, delays)
        interval = statistics.mean(delays.values()) / max(gets - 0.5, 0.5)
        fixed = {
            "initial_delay": interval,
            "backoff_factor": 1,
            "max_interval": interval,
            "jitter": 0,
        }
        flat, fgets = await one_run(fixed, delays)
        report.add(
            "latency",
            f"{shape}: backoff p50 / p99 completion->webhook, s",
            f"{pct(lat, 0.5):.2f} / {pct(lat, 0.99):.2f}",
        )
        report.add("latency", f"{shape}: backoff GETs per order", gets)
        report.add(
            "latency",
            f"{shape}: fixed {interval:.2f}s p50 / p99, s",
            f"{pct(flat, 0.5):.2f} / {pct(flat, 0.99):.2f}",
        )
        report.add("latency", f"{shape}: fixed GETs per order", fgets)
