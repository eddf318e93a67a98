"""The learned cadence's arithmetic, without a daemon: `python -m bench.cadence_model`.

For each shape of completion times, the sketch a daemon polling with the configured back-off
would learn from 1,000 completions, and on it (the plan's own arithmetic, no sampling) the
p50 / p99 latency from completion to poll and the GETs per order of: the back-off; evenly
spaced quantiles alone (the first design) at the back-off's budget; a fixed interval at that
budget; the learned plan. Then the same plans checked on 20,000 fresh completions, and how
long making the plan took. docs/polling.md quotes it.

`--search`: how far from the best any plan could be. For each shape, a local search (random
moves of poll ages, polls added and dropped; 4,000 tries, seeded) for the plan that beats a
fixed interval by most on both p50 and p99 at once, at no more GETs per order, on the exact
distribution of 20,000 completions, moving from the fixed interval or the learned plan,
whichever is better: the best ratio max(p50 / fixed p50, p99 / fixed p99) found, beside the
learned plan's. Where the search finds nothing clearly below 1, no plan it could reach at
that budget is clearly better than a fixed interval on both."""

from __future__ import annotations

import bisect
import math
import random
import sys
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


def exact(ts: list[float]) -> Distribution:
    """The distribution of these completion ages, each known to 0.1%."""
    return Distribution(Sketch().add((t * 0.999, t) for t in ts))


def search(
    dist: Distribution, budget: float, fixed: list[float], start: list[float], tries: int
) -> list[float]:
    """The plan with the least max(p50, p99) relative to `fixed` found at <= budget, moving
    from the better of `fixed` and `start`."""
    f50, f99 = latency_quantile(dist, fixed, 0.5), latency_quantile(dist, fixed, 0.99)

    def worse(ages: list[float]) -> float:
        if expected_gets(dist, ages) > budget * 1.0005:
            return math.inf
        q50, q99 = latency_quantile(dist, ages, 0.5), latency_quantile(dist, ages, 0.99)
        return max(q50 / f50, q99 / f99)

    rng = random.Random(3)
    best, score = min(((list(a), worse(a)) for a in (fixed, start)), key=lambda x: x[1])
    for _ in range(tries):
        ages = list(best)
        for _ in range(rng.randint(1, 3)):
            ages[rng.randrange(len(ages))] *= math.exp(rng.gauss(0, 0.05))
        if rng.random() < 0.05 and len(ages) > 3:
            del ages[rng.randrange(len(ages))]
        if rng.random() < 0.05:
            k = rng.randrange(len(ages))
            ages.insert(k, ages[k] * 0.8)
        ages.sort()
        if (s := worse(ages)) < score:
            best, score = ages, s
    return best


def frontier(tries: int) -> None:
    print(f"{'shape':38} {'plan':12} {'p50 / fixed':>12} {'p99 / fixed':>12} {'GETs':>6}")
    for name, draw, (first, factor, cap) in SHAPES:
        rng = random.Random(1)
        dist = exact([draw(rng) for _ in range(20000)])
        made = plan(dist, first, factor, cap)
        fixed = fixed_ages(dist.end, made.fixed_s)
        f50, f99 = latency_quantile(dist, fixed, 0.5), latency_quantile(dist, fixed, 0.99)
        for label, ages in (
            ("learned", list(made.ages)),
            ("best found", search(dist, made.budget, fixed, list(made.ages), tries)),
        ):
            q50, q99 = latency_quantile(dist, ages, 0.5), latency_quantile(dist, ages, 0.99)
            print(
                f"{name:38} {label:12} {q50 / f50:12.3f} {q99 / f99:12.3f}"
                f" {expected_gets(dist, ages):6.2f}"
            )


def main() -> None:
    if "--search" in sys.argv[1:]:
        frontier(4000)
        return
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
