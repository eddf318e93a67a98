"""2. Overhead: orderwatch's polls/s beside a bare aiohttp loop (same concurrency, same
simulator, same run), CPU time per poll, and where the difference goes: the client alone,
the daemon with its hot store calls answered in memory (bench/nostore.py), the cheapest poll
loop built from the same client and policy (`floor_loop`), and the SQLite store's part of a
poll without HTTP.

The machine is shared and noisy (back-to-back runs of the same loop differ by 10-20%), so the
loops run as alternating rounds and the ratio is the median of the rounds, with its range.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench import inproc
from bench.common import API_KEY, Report, sim_stats, simulator_process
from bench.inproc import settings
from bench.nostore import heap_store
from orderwatch.polling.client import RunaClient
from orderwatch.polling.limiter import SpacedLimiter
from orderwatch.polling.policy import Reschedule, decide
from orderwatch.store.base import Claim
from orderwatch.store.sqlite import SqliteStore

CONCURRENCY = 32
ORDERS = 5000


@dataclass
class Run:
    per_s: float
    cpu_s: float  # process CPU per call, all threads
    loop_cpu_s: float  # CPU per call of this (the event loop's) thread alone


async def measured(seconds: float, count: Callable[[], Awaitable[int]]) -> Run:
    """Let whatever is running run for `seconds`; `count()` says how many calls so far."""
    n0, c0, l0, t0 = await count(), time.process_time(), time.thread_time(), time.monotonic()
    await asyncio.sleep(seconds)
    n1, c1, l1, t1 = await count(), time.process_time(), time.thread_time(), time.monotonic()
    n = max(n1 - n0, 1)
    return Run(n / (t1 - t0), (c1 - c0) / n, (l1 - l0) / n)


async def back_to_back(seconds: float, get: Callable[[str], Awaitable[object]]) -> Run:
    """32 tasks calling `get(order_id)` back to back, measured over `seconds`."""
    stop = asyncio.Event()
    done = 0

    async def worker(k: int) -> None:
        nonlocal done
        i = k
        while not stop.is_set():
            await get(f"O-RATE{i % ORDERS:05d}")
            done += 1
            i += CONCURRENCY

    async def count() -> int:
        return done

    tasks = [asyncio.create_task(worker(k)) for k in range(CONCURRENCY)]
    try:
        return await measured(seconds, count)
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def bare_loop(base: str, seconds: float) -> Run:
    """The floor: plain aiohttp GETs of the order URLs."""
    conn = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def get(order_id: str) -> None:
            async with s.get(f"{base}/order/{order_id}", headers={"X-Api-Key": API_KEY}) as r:
                await r.read()

        return await back_to_back(seconds, get)


async def client_loop(base: str, seconds: float) -> Run:
    """The same through orderwatch's RunaClient (headers, timeout, body cap, classification)
    and nothing else: splits the gap into the client and everything after it."""
    client = RunaClient(
        base, API_KEY, api_version="2024-02-05", timeout_s=10, max_connections=CONCURRENCY
    )
    async with client:
        return await back_to_back(seconds, client.get_order)


async def floor_loop(base: str, seconds: float) -> Run:
    """The cheapest poll loop built from orderwatch's parts: 32 workers take the earliest order
    from an in-memory heap, pass the limiter, GET through RunaClient, ask the policy and push
    the order back. No dispatcher, prefetch queue, gate, metrics or store: what any poller
    design around this client and policy can reach at best (a diagnostic, not durable)."""
    with tempfile.TemporaryDirectory() as tmp:
        polling = settings(Path(tmp), base, polling={"max_interval": "1ms", "jitter": 0}).polling
    limiter, rng, now = SpacedLimiter(100_000, start_full=False), random.Random(), time.time()
    heap = [(now, f"O-RATE{i:05d}", 0) for i in range(ORDERS)]
    stop = asyncio.Event()
    done = 0
    client = RunaClient(
        base, API_KEY, api_version="2024-02-05", timeout_s=10, max_connections=CONCURRENCY
    )

    async def worker() -> None:
        nonlocal done
        while not stop.is_set():
            due_at, order_id, polls = heapq.heappop(heap)
            if not limiter.try_acquire():
                await limiter.acquire()
            answer = await client.get_order(order_id)
            claim = Claim(order_id, 1, due_at, now, polls, 0, None, lease_until=now + 60)
            d = decide(answer, claim, time.time(), polling, rng)
            assert isinstance(d, Reschedule)
            heapq.heappush(heap, (d.next_poll_at, order_id, d.polls))
            done += 1

    async def count() -> int:
        return done

    async with client:
        tasks = [asyncio.create_task(worker()) for _ in range(CONCURRENCY)]
        try:
            return await measured(seconds, count)
        finally:
            stop.set()
            await asyncio.gather(*tasks)


async def orderwatch_loop(base: str, seconds: float) -> Run:
    with tempfile.TemporaryDirectory() as tmp:
        s = settings(
            Path(tmp),
            base,
            rate_limit={"requests_per_second": 100_000, "max_concurrency": CONCURRENCY},
            polling={"initial_delay": "0s", "max_interval": "1ms", "jitter": 0},
        )
        async with inproc.daemon(s) as d:  # looked up here: bench.prefetch wraps it
            await d.add_orders([f"O-RATE{i:05d}" for i in range(ORDERS)])
            await asyncio.sleep(2.0)

            async def count() -> int:
                return int((await sim_stats(base))["count"])

            return await measured(seconds, count)


async def store_alone(seconds: float) -> Run:
    """What a poll asks of the SQLite store, without HTTP: claims in the poller's batches
    (half its prefetch queue), then one reschedule per claim, 32 at a time."""
    with tempfile.TemporaryDirectory() as tmp:
        store = await SqliteStore.open(Path(tmp), daemon=True, now=time.time())
        try:
            await store.add_orders((f"O-RATE{i:05d}" for i in range(ORDERS)), time.time(), 0.0)
            stop = asyncio.Event()
            done = 0

            async def poll_all() -> None:
                nonlocal done
                while not stop.is_set():
                    now = time.time()
                    claims = await store.claim_due(now, CONCURRENCY, "bench", 60.0)
                    await asyncio.gather(
                        *(
                            store.reschedule(
                                c,
                                now + 0.001,
                                polls=c.polls + 1,
                                error_streak=0,
                                first_404_at=None,
                                last_error=None,
                                last_body=b'{"status": "PROCESSING"}',
                            )
                            for c in claims
                        )
                    )
                    done += len(claims)

            async def count() -> int:
                return done

            task = asyncio.create_task(poll_all())
            try:
                return await measured(seconds, count)
            finally:
                stop.set()
                await task
        finally:
            await store.close()


async def run(report: Report, smoke: bool) -> None:
    seconds, rounds = (3.0, 1) if smoke else (5.0, 3)
    bare: list[Run] = []
    client: list[Run] = []
    ours: list[Run] = []
    no_store: list[Run] = []
    floor: list[Run] = []
    async with simulator_process("--complete-after", "100d") as base:
        for _ in range(rounds):
            bare.append(await bare_loop(base, seconds))
            client.append(await client_loop(base, seconds))
            ours.append(await orderwatch_loop(base, seconds))
            with heap_store():
                no_store.append(await orderwatch_loop(base, seconds))
            floor.append(await floor_loop(base, seconds))
    store = await store_alone(seconds)

    def ratio(xs: list[Run]) -> tuple[float, str]:
        rs = [x.per_s / b.per_s for x, b in zip(xs, bare, strict=True)]
        return statistics.median(rs), f"range {min(rs):.2f}-{max(rs):.2f} over {len(rs)} round(s)"

    def med(xs: list[Run], f: Callable[[Run], float]) -> float:
        return statistics.median(f(x) for x in xs)

    client_ratio, client_note = ratio(client)
    ours_ratio, ours_note = ratio(ours)
    no_store_ratio, no_store_note = ratio(no_store)
    floor_ratio, floor_note = ratio(floor)
    report.add("overhead", "bare aiohttp loop, req/s (c=32)", med(bare, lambda r: r.per_s))
    report.add("overhead", "RunaClient alone, req/s (c=32)", med(client, lambda r: r.per_s))
    report.add("overhead", "RunaClient alone / bare", client_ratio, note=client_note)
    report.add("overhead", "orderwatch polls/s (c=32, limiter open)", med(ours, lambda r: r.per_s))
    report.add("overhead", "orderwatch / bare", ours_ratio, ">= 0.8", ours_ratio >= 0.8, ours_note)
    report.add(
        "overhead",
        "diagnostic: orderwatch, store in memory / bare",
        no_store_ratio,
        note=no_store_note,
    )
    report.add(
        "overhead",
        "diagnostic: minimal poll loop (heap, no store) / bare",
        floor_ratio,
        note=floor_note,
    )
    # Polls/s track 1 / (CPU per poll, all threads): the process is busy all the time, one
    # thread at a time in Python (the GIL). If this matches the measured ratio, the gap is CPU
    # spent per poll, not time lost waiting (limiter, queue, store).
    report.add(
        "overhead",
        "CPU per request, bare / per poll, orderwatch",
        med(bare, _cpu_ms) / med(ours, _cpu_ms),
        note="the ratio the CPU times alone predict",
    )
    report.add("overhead", "CPU ms per poll: orderwatch, all threads", med(ours, _cpu_ms))
    report.add("overhead", "CPU ms per poll: orderwatch, loop thread", med(ours, _loop_ms))
    report.add("overhead", "CPU ms per request: RunaClient alone", med(client, _cpu_ms))
    report.add("overhead", "CPU ms per request: bare loop", med(bare, _cpu_ms))
    report.add("overhead", "CPU ms per poll: diagnostic, store in memory", med(no_store, _cpu_ms))
    report.add("overhead", "CPU ms per poll: diagnostic, minimal poll loop", med(floor, _cpu_ms))
    report.add("overhead", "store alone: polls/s (claim + reschedule)", store.per_s)
    report.add("overhead", "store alone: CPU ms per poll, all threads", _cpu_ms(store))
    report.add("overhead", "store alone: CPU ms per poll, loop thread", _loop_ms(store))


def _cpu_ms(r: Run) -> float:
    return r.cpu_s * 1000


def _loop_ms(r: Run) -> float:
    return r.loop_cpu_s * 1000
