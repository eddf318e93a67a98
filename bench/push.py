"""Runa's own push as the fast path, polling as the backstop: completion -> webhook latency and
GETs per order, push beside polling alone, in one run. Latency: from an order's completion
at the simulator to the daemon's webhook for it arriving at a local receiver.

500 orders are added at once and complete at random over 2 minutes; Runa's push (the
simulator, in its own process) follows each completion after 0-1 s. The daemon (in this
process) polls with max_interval 60 s, first poll after 60 s: with push on, polling only has
to catch lost pushes. Runs, against a fresh simulator each:
- push: every push arrives;
- polling alone, the same cadence (what the push buys at that cadence);
- polling alone, the default-shaped cadence (first poll 2 s, doubling up to 60 s: what
  polling alone spends to come closer);
- push with 30% lost: every order must still end final, the lost ones by polling.

    python -m bench --only push        # or: python -m bench.push [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Report, free_port, sim_post, sim_stats, simulator_process
from bench.inproc import daemon, settings
from orderwatch.devtools.receiver import Receiver, running_receiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
RATE = {"requests_per_second": 10, "max_concurrency": 4}


@dataclass
class Shape:
    orders: int
    spread_s: float  # completions uniform over this
    max_interval: str
    deadline_s: float  # a run gives up after this


FULL = Shape(500, 120.0, "60s", 600.0)
QUICK = Shape(100, 20.0, "10s", 120.0)


@dataclass
class Result:
    latencies: list[float]  # completion -> webhook, s, of the orders that arrived
    gets_per_order: float
    final: int
    by_push: int  # pushes accepted


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def one_run(
    shape: Shape, polling: dict[str, Any], push_args: tuple[str, ...], seed: int
) -> Result:
    rng = random.Random(seed)
    completes = {f"O-PUSH{i:04d}": rng.uniform(0.0, shape.spread_s) for i in range(shape.orders)}
    port = free_port()
    args: tuple[str, ...] = ("--complete-after", "100d", "--seed", str(seed))
    if push_args:
        url = f"http://127.0.0.1:{port}/runa/webhook"
        args += ("--push-url", url, "--push-secret", SECRET, "--push-delay", "0s..1s", *push_args)
    async with simulator_process(*args) as base:
        receiver = Receiver(SECRET)
        async with running_receiver(receiver) as hook:
            with tempfile.TemporaryDirectory() as tmp:
                s = settings(
                    Path(tmp),
                    base,
                    rate_limit=RATE,
                    polling=polling,
                    webhooks=[{"url": hook, "secret": SECRET}],
                    push={"listen": f"127.0.0.1:{port}", "secret": SECRET},
                )
                async with daemon(s) as d:
                    done_at = await create(base, completes)
                    await d.add_orders(list(completes))
                    deadline = time.monotonic() + shape.deadline_s
                    while len({e.order_id for e in receiver.events}) < len(completes):
                        if time.monotonic() > deadline:
                            break
                        await asyncio.sleep(0.1)
                    assert d.store is not None
                    final = (await d.store.counts())["final"]
                    by_push = int(d.metrics.push.pushes.labels(outcome="accepted")._value.get())
                gets = (await sim_stats(base))["count"]
    first: dict[str, float] = {}
    for e in receiver.events:
        first.setdefault(e.order_id, e.received_at)
    lat = [first[i] - done_at[i] for i in completes if i in first]
    return Result(lat, gets / len(completes), final, by_push)


async def create(base: str, completes: dict[str, float]) -> dict[str, float]:
    """Create the orders in the simulator; when each completes (this process's monotonic
    clock, the simulator's too: the midpoint of the request that created it, plus its delay)."""
    done_at = {}
    for order_id, after in completes.items():
        t0 = time.monotonic()
        await sim_post(base, "/_sim/orders", {"ids": [order_id], "complete_after": after})
        done_at[order_id] = (t0 + time.monotonic()) / 2 + after
    return done_at


def add(report: Report, name: str, r: Result, shape: Shape, target: str = "") -> None:
    p50, p99 = pct(r.latencies, 0.5), pct(r.latencies, 0.99)
    ok = (p50 <= 1.0 and p99 <= 3.0) if target else None
    report.add("push", f"{name}: p50 / p99 latency, s", f"{p50:.2f} / {p99:.2f}", target, ok)
    gets_ok = r.gets_per_order <= 1.5 if target else None
    report.add(
        "push", f"{name}: GETs per order", r.gets_per_order, "<= 1.5" if target else "", gets_ok
    )
    report.add(
        "push",
        f"{name}: orders final",
        f"{r.final} of {shape.orders}",
        "all",
        r.final == shape.orders,
        f"{r.by_push} pushes accepted",
    )


async def run(report: Report, smoke: bool) -> None:
    shape = QUICK if smoke else FULL
    backstop = {
        "initial_delay": shape.max_interval,
        "backoff_factor": 2,
        "max_interval": shape.max_interval,
        "jitter": 0.1,
    }
    default = {**backstop, "initial_delay": "2s"}
    report.add(
        "push",
        "orders, completed within, max_interval",
        f"{shape.orders}, {shape.spread_s:.0f}s, {shape.max_interval}",
    )
    add(
        report,
        "push",
        await one_run(shape, backstop, ("--push-loss", "0"), 1),
        shape,
        "p50<=1 p99<=3",
    )
    add(report, "polling only, same cadence", await one_run(shape, backstop, (), 1), shape)
    add(report, "polling only, 2s first poll", await one_run(shape, default, (), 1), shape)
    add(report, "push, 30% lost", await one_run(shape, backstop, ("--push-loss", "0.3"), 2), shape)


def main() -> int:
    from orderwatch.core import aio

    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="100 orders over 20 s (a smoke test)")
    args = p.parse_args()
    report = Report()
    aio.run(run(report, args.quick))
    print("\n" + report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
