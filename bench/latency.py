"""4. Detection latency against request budget. Orders complete at random times, in three
shapes; for each, p50/p99 from completion to webhook receipt and GETs per order, for:

- `backoff`: orderwatch with `learn: false`, the configured back-off;
- `learned`: orderwatch after a warm-up of orders it learns from (its cadence);
- `fixed`: fixed-interval polling (`backoff_factor: 1`, no jitter) at the interval whose
  GETs per order on these completion times equal what the learned cadence spent (measured).

Each is a real run: a daemon in this process, a simulator process, a webhook receiver.
Orders arrive one by one over a few seconds (not all at once, which would make every run
wait on the rate limit). The back-off run goes beside the warm-up (separate simulators and
receivers); the learned and fixed runs follow, one at a time. The latency distributions are drawn
to docs/img/latency-<shape>.png (bench/results/img with --smoke) when matplotlib is
installed (the `bench` extra)."""

from __future__ import annotations

import asyncio
import math
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import REPO, Report, sim_stats, simulator_process
from bench.inproc import daemon, settings
from orderwatch.devtools.receiver import Receiver, running_receiver
from orderwatch.ops.daemon import Daemon
from orderwatch.polling.cadence import Schedule

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MIX_SCALE = 10  # the mix's times are divided by this: 1-5 s and 1-5 min become 0.1-0.5 s, 6-30 s


@dataclass(frozen=True)
class Shape:
    name: str
    draw: Callable[[random.Random], float]  # seconds PROCESSING
    backoff: dict[str, Any]  # the configured back-off: the budget the learned cadence spends


def shapes(smoke: bool) -> list[Shape]:
    horizon = 8.0 if smoke else 40.0
    scale = MIX_SCALE * (5 if smoke else 1)
    backoff = {"initial_delay": "1s", "backoff_factor": 1.5, "max_interval": "10s"}
    lo = math.log(0.5)
    return [
        Shape("uniform", lambda r: r.uniform(0.5, horizon), backoff),
        Shape("log-uniform", lambda r: math.exp(r.uniform(lo, math.log(horizon))), backoff),
        Shape(
            "mix",  # 80% in 1-5 s, 20% in 1-5 min; a back-off of 1 s x1.5 up to 1 min
            lambda r: (r.uniform(1, 5) if r.random() < 0.8 else r.uniform(60, 300)) / scale,
            {"initial_delay": 1 / scale, "backoff_factor": 1.5, "max_interval": 60 / scale},
        ),
    ]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


@dataclass
class Measured:
    latencies: list[float]
    gets: float


class Feeder:
    """Adds orders one by one over `spread_s`, each created in the simulator just before,
    and measures completion to first webhook receipt."""

    def __init__(self, base: str, d: Daemon, receiver: Receiver) -> None:
        self.base = base
        self.root = base.removesuffix("/v2")
        self.d = d
        self.receiver = receiver

    async def run(self, delays: dict[str, float], spread_s: float) -> Measured:
        before = (await sim_stats(self.base))["count"]
        done_at: dict[str, float] = {}
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as s:
            for k, (oid, delay) in enumerate(delays.items()):
                await asyncio.sleep(max(0.0, t0 + k * spread_s / len(delays) - time.monotonic()))
                now = time.monotonic()
                body = {"ids": [oid], "complete_after": delay}
                async with s.post(f"{self.root}/_sim/orders", json=body) as r:
                    r.raise_for_status()
                await self.d.add_orders([oid])
                done_at[oid] = now + delay
        first: dict[str, float] = {}
        while len(first) < len(delays):
            await asyncio.sleep(0.05)
            for e in self.receiver.events:
                if e.order_id in done_at:
                    first.setdefault(e.order_id, e.received_at)
        gets = ((await sim_stats(self.base))["count"] - before) / len(delays)
        return Measured([first[i] - done_at[i] for i in delays], gets)


def polling_of(shape: Shape, **kw: Any) -> dict[str, Any]:
    return {**shape.backoff, "jitter": 0.1, **kw}


class Runner:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.n = 0

    def settings(self, base: str, url: str, polling: dict[str, Any]) -> Any:
        self.n += 1
        return settings(
            self.tmp / f"run{self.n}",
            base,
            rate_limit={"requests_per_second": 1000, "max_concurrency": 32},
            polling=polling,
            webhooks=[{"url": url, "secret": SECRET}],
        )

    async def plain(
        self, polling: dict[str, Any], delays: dict[str, float], spread: float
    ) -> Measured:
        async with simulator_process("--complete-after", "100d") as base:
            receiver = Receiver(SECRET)
            async with (
                running_receiver(receiver) as url,
                daemon(self.settings(base, url, polling)) as d,
            ):
                return await Feeder(base, d, receiver).run(delays, spread)


async def shape_runs(
    runner: Runner, shape: Shape, n: int, warm: int, spread: float
) -> tuple[Measured, Measured, Measured, Schedule, float]:
    """The back-off beside the warm-up, then the learned cadence, then a fixed interval at
    the learned cadence's measured GETs per order."""
    rng = random.Random(42)
    warmup = {f"O-WARM{i:04d}": round(shape.draw(rng), 3) for i in range(warm)}
    delays = {f"O-LAT{i:04d}": round(shape.draw(rng), 3) for i in range(n)}
    back = asyncio.ensure_future(runner.plain(polling_of(shape, learn=False), delays, spread))
    async with simulator_process("--complete-after", "100d") as base:
        receiver = Receiver(SECRET)
        learning = polling_of(shape)
        async with (
            running_receiver(receiver) as url,
            daemon(runner.settings(base, url, learning)) as d,
        ):
            feeder = Feeder(base, d, receiver)
            await feeder.run(warmup, spread * warm / n)
            assert d.cadence_memory is not None
            await d.cadence_memory.refresh()  # the warm-up's last completions too
            schedule = d.cadence.schedule
            assert schedule is not None, "the warm-up taught the daemon nothing"
            backoff = await back
            learned = await feeder.run(delays, spread)
    interval = fixed_interval(list(delays.values()), learned.gets)
    fixed = polling_of(
        shape,
        initial_delay=interval,
        backoff_factor=1,
        max_interval=interval,
        jitter=0,
        learn=False,
    )
    return backoff, learned, await runner.plain(fixed, delays, spread), schedule, interval


def fixed_interval(delays: list[float], gets: float) -> float:
    """The interval at which polling from it (first poll one interval after adding) spends
    `gets` GETs per order on these completion times."""
    lo, hi = 1e-3, max(delays) * 2
    for _ in range(60):
        mid = (lo * hi) ** 0.5
        spent = sum(max(1, math.ceil(t / mid)) for t in delays) / len(delays)
        lo, hi = (mid, hi) if spent > gets else (lo, mid)
    return hi


async def run(report: Report, smoke: bool) -> None:
    n, warm, spread = (40, 60, 3.0) if smoke else (500, 500, 10.0)
    with tempfile.TemporaryDirectory() as tmp:
        runner = Runner(Path(tmp))
        drawn: dict[str, dict[str, Measured]] = {}
        for shape in shapes(smoke):
            back, learned, fixed, schedule, interval = await shape_runs(
                runner, shape, n, warm, spread
            )
            drawn[shape.name] = {
                "backoff": back,
                "learned": learned,
                f"fixed {interval:.2f}s": fixed,
            }
            for label, m in (
                ("backoff", back),
                ("learned", learned),
                (f"fixed {interval:.2f}s", fixed),
            ):
                report.add(
                    "latency",
                    f"{shape.name}: {label} p50 / p99 completion->webhook, s",
                    f"{pct(m.latencies, 0.5):.2f} / {pct(m.latencies, 0.99):.2f}",
                )
                report.add("latency", f"{shape.name}: {label} GETs per order", m.gets)
            for q, name in ((0.5, "p50"), (0.99, "p99")):
                ratio = pct(learned.latencies, q) / pct(fixed.latencies, q)
                report.add(
                    "latency",
                    f"{shape.name}: learned / fixed, {name}",
                    ratio,
                    "<= 1.05",
                    ratio <= 1.05,
                )
            report.add(
                "latency",
                f"{shape.name}: learned plan, polls up to {schedule.ages[-1]:.1f}s",
                len(schedule.ages),
                note=f"first at {schedule.ages[0]:.2f}s",
            )
    draw(drawn, REPO / ("bench/results/img" if smoke else "docs/img"), smoke)


def draw(drawn: dict[str, dict[str, Measured]], out: Path, smoke: bool) -> None:
    """One picture per shape: the share of orders seen within t of completing, per poller."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("latency: matplotlib not installed (pip install -e '.[bench]'): no pictures")
        return
    out.mkdir(parents=True, exist_ok=True)
    scale = f" (times / {MIX_SCALE * (5 if smoke else 1)})"
    for shape, runs in drawn.items():
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        for label, m in runs.items():
            xs = sorted(m.latencies)
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            p50, p99 = pct(m.latencies, 0.5), pct(m.latencies, 0.99)
            ax.step(
                xs,
                ys,
                where="post",
                label=f"{label}: p50 {p50:.2f} s, p99 {p99:.2f} s, {m.gets:.2f} GETs",
            )
        for y in (0.5, 0.99):
            ax.axhline(y, color="grey", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("completion -> webhook, s (log)")
        ax.set_ylabel("share of orders")
        ax.set_title(f"{shape}{scale if shape == 'mix' else ''}: {len(xs)} orders")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        path = out / f"latency-{shape}.png"
        fig.savefig(path)
        plt.close(fig)
        print(f"latency: drew {path.relative_to(REPO)}")
