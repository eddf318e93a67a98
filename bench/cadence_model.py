"""The learned cadence's arithmetic, without a daemon: `python -m bench.cadence_model`.

For each shape of completion times, the sketch a daemon polling with the configured back-off
would learn from 1,000 completions, and on it (the plan's own arithmetic, no sampling) the
p50 / p99 latency from completion to poll and the GETs per order of: the back-off; evenly
spaced quantiles alone (the first design) at the back-off's budget; a fixed interval at that
budget; the learned plan. Then the same plans checked on 20,000 fresh completions, and how
long making the plan took. docs/polling.md quotes it."""

from __future__ import annotations

import bisect
import math
import random
import time
from collections.abc import Callable

from orderwatch.polling.cadence_plan import (
    backoff_ages,
    expected_gets,
    fixed_ages,
    latency_quantile,
    plan,
    spend,
)
from orderwatch.polling.cadence_sketch import Distribution, Sketch

Draw = Callable[[random.Random], float]
SHAPES: list[tuple[str, Draw, tuple[float, float, float]]] = [
    ("uniform 0.5-40 s", lambda r: r.uniform(0.5, 40), (1, 1.5, 10)),
    (
        "log-uniform 0.5-40 s",
        lambda r: math.exp(r.uniform(math.log(0.5), math.log(40))),
        (1, 1.5, 10),
    ),
    (
        "mix: 80% 1-5 s, 20% 1-5 min",
        lambda r: r.uniform(1, 5) if r.random() < 0.8 else r.uniform(60, 300),
        (1, 1.5, 60),
    ),
    ("log-uniform 1 s-1 h", lambda r: math.exp(r.uniform(0, math.log(3600))), (2, 2, 300)),
    (
        "90% 1-5 s, 10% log-uniform to 15 min",
        lambda r: r.uniform(1, 5) if r.random() < 0.9 else math.exp(r.uniform(1.6, 6.8)),
        (1, 1.5, 60),
    ),
]


def seen_by(ages: list[float], t: float) -> tuple[float, float]:
    k = bisect.bisect_left(ages, t)
    return (ages[k - 1] if k else 0.0, ages[k])


def sampled(
    ages: list[float], ts: list[float], factor: float, cap: float
) -> tuple[float, float, float]:
    """p50, p99 and GETs per order polling at `ages` (past them: back off from the last gap)."""
    ages = list(ages)
    gap = ages[-1] - (ages[-2] if len(ages) > 1 else 0.0)
    while ages[-1] < max(ts):
        gap = min(cap, gap * factor)
        ages.append(ages[-1] + gap)
    lat, gets = [], 0
    for t in ts:
        k = bisect.bisect_left(ages, t)
        lat.append(ages[k] - t)
        gets += k + 1
    lat.sort()
    return lat[len(lat) // 2], lat[int(0.99 * len(lat))], gets / len(ts)


def main() -> None:
    head = f"{'shape':38} {'poller':16} {'model p50/p99 s':>16} {'GETs':>6}"
    print(f"{head} {'sampled p50/p99':>16} {'GETs':>6}")
    for name, draw, (first, factor, cap) in SHAPES:
        rng = random.Random(1)
        back = backoff_ages(1e7, first, factor, cap)
        sketch = Sketch().add(seen_by(back, draw(rng)) for _ in range(1000))
        dist = Distribution(sketch)
        t0 = time.process_time()
        made = plan(dist, first, factor, cap)
        took = time.process_time() - t0
        fresh = [draw(rng) for _ in range(20000)]
        quantiles = spend(dist, made.budget, 1e9, 0.0, first, cap) or []
        rows = [
            ("back-off", backoff_ages(dist.end, first, factor, cap)),
            ("quantiles alone", quantiles),
            (f"fixed {made.fixed_s:.2f}s", fixed_ages(dist.end, made.fixed_s)),
            ("learned plan", list(made.ages)),
        ]
        for label, ages in rows:
            q50, q99 = latency_quantile(dist, ages, 0.5), latency_quantile(dist, ages, 0.99)
            model = f"{q50:.2f} / {q99:.2f}"
            p50, p99, gets = sampled(ages, fresh, factor if label != rows[2][0] else 1.0, cap)
            print(
                f"{name:38} {label:16} {model:>16} {expected_gets(dist, ages):6.2f}"
                f" {f'{p50:.2f} / {p99:.2f}':>16} {gets:6.2f}"
            )
        print(f"{name:38} planned in {took * 1000:.0f} ms of CPU, {len(made.ages)} polls\n")


if __name__ == "__main__":
    main()
