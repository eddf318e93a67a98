"""2. Overhead: orderwatch's polls/s beside a bare aiohttp loop (same concurrency, same
simulator, same run), and CPU time per poll."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from bench.common import API_KEY, Report, sim_stats, simulator_process
from bench.inproc import daemon, settings
from orderwatch.client import RunaClient

CONCURRENCY = 32
ORDERS = 5000


async def back_to_back(
    seconds: float, get: Callable[[str], Awaitable[object]]
) -> tuple[float, float]:
    """32 tasks calling `get(order_id)` back to back. Returns (calls/s, cpu s per call)."""
    stop = time.monotonic() + seconds
    done = 0

    async def worker(k: int) -> None:
        nonlocal done
        i = k
        while time.monotonic() < stop:
            await get(f"O-RATE{i % ORDERS:05d}")
            done += 1
            i += CONCURRENCY

    c0, t0 = time.process_time(), time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(CONCURRENCY)))
    c1, t1 = time.process_time(), time.monotonic()
    return done / (t1 - t0), (c1 - c0) / max(done, 1)


async def bare_loop(base: str, seconds: float) -> tuple[float, float]:
    """The floor: plain aiohttp GETs of the order URLs."""
    conn = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def get(order_id: str) -> None:
            async with s.get(f"{base}/order/{order_id}", headers={"X-Api-Key": API_KEY}) as r:
                await r.read()

        return await back_to_back(seconds, get)


async def client_loop(base: str, seconds: float) -> tuple[float, float]:
    """The same through orderwatch's RunaClient (headers, timeout, body cap, classification)
    and nothing else: splits the gap into the client and everything after it."""
    client = RunaClient(
        base, API_KEY, api_version="2024-02-05", timeout_s=10, max_connections=CONCURRENCY
    )
    async with client:
        return await back_to_back(seconds, client.get_order)


async def orderwatch_loop(base: str, seconds: float) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        s = settings(
            Path(tmp),
            base,
            rate_limit={"requests_per_second": 100_000, "max_concurrency": CONCURRENCY},
            polling={"initial_delay": "0s", "max_interval": "1ms", "jitter": 0},
        )
        async with daemon(s) as d:
            await d.add_orders([f"O-RATE{i:05d}" for i in range(ORDERS)])
            await asyncio.sleep(2.0)
            n0, c0, t0 = (await sim_stats(base))["count"], time.process_time(), time.monotonic()
            await asyncio.sleep(seconds)
            n1, c1, t1 = (await sim_stats(base))["count"], time.process_time(), time.monotonic()
    polls = n1 - n0
    return polls / (t1 - t0), (c1 - c0) / max(polls, 1)


async def run(report: Report, smoke: bool) -> None:
    seconds = 3.0 if smoke else 10.0
    async with simulator_process("--complete-after", "100d") as base:
        bare, bare_cpu = await bare_loop(base, seconds)
        client, client_cpu = await client_loop(base, seconds)
        ours, our_cpu = await orderwatch_loop(base, seconds)
    report.add("overhead", "bare aiohttp loop, req/s (c=32)", bare)
    report.add("overhead", "RunaClient alone, req/s (c=32)", client)
    report.add("overhead", "RunaClient alone / bare", client / bare)
    report.add("overhead", "orderwatch polls/s (c=32, limiter open)", ours)
    report.add("overhead", "orderwatch / bare", ours / bare, ">= 0.8", ours / bare >= 0.8)
    report.add("overhead", "CPU ms per poll: orderwatch", our_cpu * 1000)
    report.add("overhead", "CPU ms per request: RunaClient alone", client_cpu * 1000)
    report.add("overhead", "CPU ms per request: bare loop", bare_cpu * 1000)
