"""Finals: how fast a backlog of completed orders drains. Every order is final at its first
GET; a final costs the GET, the payload file (temp, fsync, rename, fsync of the directory),
the commit of its event and the re-read that checks the file holds the committed payload.
Not a target of its own: the figure an operator needs after an outage, and the cost of
those steps together (`python -m bench.ab REV --bench finals` compares revisions)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from bench.common import Report, simulator_process
from bench.inproc import daemon, settings


async def drain(base: str, n: int) -> tuple[float, float]:
    """Add `n` orders that are final at once; finals per second and CPU ms per final."""
    with tempfile.TemporaryDirectory() as tmp:
        s = settings(
            Path(tmp),
            base,
            rate_limit={"requests_per_second": 100_000, "max_concurrency": 32},
            polling={"initial_delay": "0s"},
        )
        async with daemon(s) as d:
            assert d.store is not None
            c0, t0 = time.process_time(), time.monotonic()
            await d.add_orders([f"O-FIN{i:06d}" for i in range(n)])
            while (await d.store.counts())["pending"]:
                await asyncio.sleep(0.02)
            elapsed, cpu = time.monotonic() - t0, time.process_time() - c0
            assert sum(1 for _ in (Path(tmp) / "orders").glob("*.json")) == n
    return n / elapsed, cpu / n * 1000


async def run(report: Report, smoke: bool) -> None:
    n = 500 if smoke else 5000
    async with simulator_process("--complete-after", "0") as base:
        per_s, cpu_ms = await drain(base, n)
    report.add("finals", f"finals/s ({n:,} orders final at the first GET)", per_s)
    report.add("finals", "CPU ms per final, all threads", cpu_ms)
