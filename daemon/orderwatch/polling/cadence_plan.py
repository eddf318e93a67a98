"""Planning the ages at which to poll an order, from the distribution of completion ages.

The plan spends a budget: the GETs per completed order that the configured back-off
(`initial_delay`, `backoff_factor`, `max_interval`) would spend on the same completions. It
puts them where completions are. A poll is placed at the earliest of:

- the age by which another `step` of the completions has come (evenly spaced quantiles:
  dense where completions are dense, none where there are none);
- `reach` past the end of the stretch the last poll covered (so where completions are
  sparse the gaps stop growing: without this, a long tail gets gaps as long as the tail,
  and its p99 is ten times a fixed interval's);
- `max_interval` after the last poll;

and never sooner than `floor` (initial_delay) after it, the first one included.

`step` and `reach` are chosen by search: for each reach, the step that spends the budget;
of those plans, the one whose mean latency (completion to poll) is least among those whose
p99 is no worse than a fixed interval's of the same budget. A fixed interval is one of the
plans searched (reach = its interval, no steps), so the chosen one is never worse on the
sketch, by both measures. All of this is arithmetic on the sketch: no sampling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from orderwatch.polling.cadence_sketch import Distribution

MAX_POLLS = 2000  # a plan longer than this is not made (the back-off is used)
# Shares of completions a gap may hold before its `reach` counts: 0, or a little, so that a
# few stray completions in a long quiet stretch do not fill it with polls.
SLACKS = (0.0, 0.002)
# Reaches tried, as multiples of the fixed interval of the same budget.
REACHES = (*(1.1**k for k in range(-7, 8)), 3.0, 5.0, 10.0, 1e9)
FINER = 1.1 ** (1 / 3)  # then these steps either side of the best


class Plan(NamedTuple):
    ages: tuple[float, ...]  # the ages (s since added) at which to poll
    budget: float  # expected GETs per completed order: the back-off's on this sketch
    gets: float  # the plan's, on this sketch
    p50_s: float  # latency from completion to poll on the sketch: the plan's...
    p99_s: float
    fixed_s: float  # ...and those of a fixed interval of the same budget
    fixed_p50_s: float
    fixed_p99_s: float


def backoff_ages(end: float, first: float, factor: float, cap: float) -> list[float]:
    """The configured back-off's poll ages, up to the first at or past `end`."""
    ages, age, gap = [], first, first
    while True:
        ages.append(age)
        if age >= end or len(ages) > MAX_POLLS:
            return ages
        gap = min(cap, gap * factor)
        age += gap


def fixed_ages(end: float, interval: float) -> list[float]:
    n = min(MAX_POLLS, int(end / interval) + 1)
    ages = [interval * k for k in range(1, n + 1)]
    while ages[-1] < end:
        ages.append(ages[-1] + interval)
    return ages


def expected_gets(dist: Distribution, ages: list[float]) -> float:
    """Poll k is sent when the order had not completed by poll k - 1."""
    gets, before = 0.0, 0.0
    for age in ages:
        gets += 1.0 - dist.cdf(before)
        before = age
        if before >= dist.end:
            break
    return gets


def late_share(dist: Distribution, ages: list[float], latency: float) -> float:
    """The share of completions seen more than `latency` after they came."""
    share, before = 0.0, 0.0
    for age in ages:
        if age - latency > before:
            share += dist.cdf(age - latency) - dist.cdf(before)
        before = age
        if before >= dist.end:
            break
    return share


def latency_quantile(dist: Distribution, ages: list[float], q: float) -> float:
    lo, hi = 0.0, max(b - a for a, b in zip([0.0, *ages], ages, strict=False))
    for _ in range(24):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if late_share(dist, ages, mid) > 1.0 - q else (lo, mid)
    return hi


def mean_latency(dist: Distribution, ages: list[float]) -> float:
    total, before = 0.0, 0.0
    for age in ages:
        mass = dist.cdf(age) - dist.cdf(before)
        total += age * mass - (dist.mean_below(age) - dist.mean_below(before))
        before = age
        if before >= dist.end:
            break
    return total


def build(
    dist: Distribution, step: float, reach: float, slack: float, floor: float, cap: float
) -> list[float] | None:
    """The plan for one (step, reach); None when it would be longer than MAX_POLLS."""
    ages: list[float] = []
    age, seen = 0.0, 0.0
    while seen < 1.0 - 1e-9:
        nxt = min(dist.age_at(seen + step), dist.age_at(seen + slack) + reach, age + cap)
        age = max(nxt, age + floor)
        ages.append(age)
        if len(ages) > MAX_POLLS:
            return None
        seen = dist.cdf(age)
    return ages


def _bisect(f: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """x in [lo, hi] where the decreasing f crosses target (geometric steps)."""
    for _ in range(18):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if f(mid) > target else (lo, mid)
    return hi


def plan(dist: Distribution, floor: float, factor: float, cap: float) -> Plan:
    """The plan for this distribution and these bounds."""
    budget = expected_gets(dist, backoff_ages(dist.end, floor, factor, cap))
    fixed = _bisect(
        lambda dt: expected_gets(dist, fixed_ages(dist.end, dt)), budget, floor, max(cap, floor)
    )
    fixed_plan = fixed_ages(dist.end, fixed)
    fixed_p99 = latency_quantile(dist, fixed_plan, 0.99)
    best, best_cost = fixed_plan, mean_latency(dist, fixed_plan) + fixed_p99
    tried = [(slack, r) for slack in SLACKS for r in REACHES]
    where = None
    for rounds in range(2):  # the grid, then finer steps around the best of it
        for slack, r in tried:
            ages = spend(dist, budget, max(floor, min(cap, fixed * r)), slack, floor, cap)
            if ages is None:
                continue
            cost = mean_latency(dist, ages)
            if cost < best_cost:  # (the p99 is the costlier half to work out)
                cost += latency_quantile(dist, ages, 0.99)
            if cost < best_cost:
                best, best_cost, where = ages, cost, (slack, r)
        if where is None or rounds:
            break
        tried = [(where[0], where[1] * FINER**k) for k in (-2, -1, 1, 2)]
    return Plan(
        tuple(best),
        budget,
        expected_gets(dist, best),
        latency_quantile(dist, best, 0.5),
        latency_quantile(dist, best, 0.99),
        fixed,
        latency_quantile(dist, fixed_plan, 0.5),
        fixed_p99,
    )


def spend(
    dist: Distribution, budget: float, reach: float, slack: float, floor: float, cap: float
) -> list[float] | None:
    """The plan with this reach whose steps spend the budget (or less, when even steps of
    a single completion's share cannot); None when the reach alone overspends it."""

    def gets(step: float) -> float:
        ages = build(dist, step, reach, slack, floor, cap)
        return float("inf") if ages is None else expected_gets(dist, ages)

    if gets(1.0) > budget * 1.001:
        return None
    step = _bisect(gets, budget, 1e-4, 1.0)
    return build(dist, step, reach, slack, floor, cap)
