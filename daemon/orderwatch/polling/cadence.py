"""The learned cadence: poll an order when orders like it tend to complete.

Every order that ends final tells how long it stayed PROCESSING: it completed after the last
poll that said so and by the poll that said final (`observe`). Those intervals are folded
into a sketch of completion ages (`cadence_sketch`) now and then, and a plan of poll ages is
made from it (`cadence_plan`): as many GETs per completed order as the configured back-off
would spend on the same completions, placed where they see completions soonest. Until
MIN_COMPLETIONS orders have completed (or with `polling.learn: false`) the configured
back-off is the cadence, as before.

Per poll this costs one bisect over the plan (`delay`); folding and planning happen off the
hot path, on the store's schedule (`cadence_memory`). The configured keys stay bounds:
`initial_delay` is the soonest first poll and the shortest gap between two polls of one
order (`floor`), `max_interval` the longest gap. Jitter shifts each order's whole plan, by
up to `jitter` of the gap at each poll, rather than each gap on its own: orders added
together still spread out, and no gap is longer than the plan made it.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from orderwatch.config.models import PollingSettings
from orderwatch.polling.cadence_plan import Plan, plan
from orderwatch.polling.cadence_sketch import WINDOW, Distribution, Sketch
from orderwatch.store.base import Claim

MIN_COMPLETIONS = 50  # completions seen before the cadence is learned rather than configured
REFRESH_EVERY = 50  # completions between folding them into the sketch (and a new plan)
FLOOR_MIN_S = 0.1  # the floor where initial_delay is shorter (or 0)
LATE_S = 5.0  # a completion seen later than this (or twice its gap) after its poll was due
KEEP_PLANS = 4  # plans kept for the orders begun under them
MAX_SHIFT = 0.45  # jitter beyond this could move a poll into its neighbour's place


def floor_of(p: PollingSettings) -> float:
    """The shortest gap between two polls of one order, the first poll's too."""
    return max(p.initial_delay_s, FLOOR_MIN_S)


class Schedule(NamedTuple):
    """A plan made ready for lookups: the poll ages, how far jitter may move each, and the
    bounds between them (an order at an age at or past bounds[k] has had poll k)."""

    polling: PollingSettings  # what it was planned for: another (a reload) means re-plan
    ages: tuple[float, ...]
    shifts: tuple[float, ...]
    bounds: tuple[float, ...]
    floor: float
    cap: float
    factor: float
    last_gap: float
    plan: Plan


def make_schedule(sketch: Sketch, p: PollingSettings) -> Schedule | None:
    """The schedule for this sketch, or None: not enough completions, learning off."""
    if not p.learn or sketch.seen < MIN_COMPLETIONS or sketch.total <= 0:
        return None
    floor = floor_of(p)
    cap = max(p.max_interval_s, floor)
    made = plan(Distribution(sketch), floor, p.backoff_factor, cap)
    if made is None:
        return None
    ages = made.ages
    gaps = [b - a for a, b in zip((0.0, *ages), ages, strict=False)]
    j = min(p.jitter, MAX_SHIFT)
    shifts = tuple(j * min(g, gaps[min(k + 1, len(gaps) - 1)]) for k, g in enumerate(gaps))
    # Halfway between where jitter may put one poll and where it may put the next.
    ends = (0.0, *(a + s for a, s in zip(ages, shifts, strict=True)))
    bounds = tuple((e + a - s) / 2 for e, a, s in zip(ends, ages, shifts, strict=False))
    return Schedule(p, ages, shifts, bounds, floor, cap, p.backoff_factor, gaps[-1], made)


def shift_of(order_id: str) -> float:
    """Where in its jitter range an order's polls fall, -1..1: the same for all its polls."""
    return (hash(order_id) & 0xFFFF) / 32767.5 - 1.0


class Cadence:
    """The plans in use and the completions not yet folded into the sketch. An order is
    polled by the plan in force when it was added (the last KEEP_PLANS are kept), so a new
    plan never changes the course of an order under way: switching plans mid-way cost an
    extra poll now and then (5-9% more GETs than either plan in the latency bench)."""

    def __init__(self) -> None:
        self.schedule: Schedule | None = None  # the newest plan: new orders follow it
        self.sketch = Sketch()  # the one the newest plan was made from
        self._plans: list[Schedule | None] = []  # oldest first; None: the back-off
        self._since: list[float] = []  # when each was adopted (wall clock)
        self._pending: deque[tuple[float, float]] = deque(maxlen=2 * WINDOW)
        self._notify: Callable[[], None] = lambda: None
        self._told = False

    def on_news(self, notify: Callable[[], None]) -> None:
        """Call `notify` when there are completions to fold, or the settings changed."""
        self._notify = notify

    def plan_for(self, added_at: float) -> Schedule | None:
        """The plan an order added at `added_at` follows (None: the back-off)."""
        if len(self._plans) <= 1:
            return self.schedule
        return self._plans[max(0, bisect.bisect_right(self._since, added_at) - 1)]

    # -- per poll ------------------------------------------------------------------------
    def delay(
        self, p: PollingSettings, order_id: str, added_at: float, now: float, rng: random.Random
    ) -> float | None:
        """Seconds from `now` to an order's next poll; None: use the configured back-off."""
        s = self.schedule
        if s is None or s.polling is not p:
            if s is not None and not self._told:  # a reload: plan again for the new bounds
                self._tell()
            return None
        if len(self._plans) > 1 and (s := self.plan_for(added_at)) is None:
            return None
        age = now - added_at
        ages = s.ages
        k = bisect.bisect_right(s.bounds, age)
        if k < len(ages):
            d = ages[k] + shift_of(order_id) * s.shifts[k] - age
        else:  # older than any completion seen: back off from the last gap, capped
            d = min(s.cap, (age - ages[-1]) * (s.factor - 1.0) + s.last_gap * s.factor)
            if p.jitter:
                d *= 1.0 + rng.uniform(-p.jitter, p.jitter)
        return d if d > s.floor else s.floor

    def first_delay(self, p: PollingSettings) -> float:
        """Seconds from adding an order to its first poll."""
        s = self.schedule
        return p.initial_delay_s if s is None or s.polling is not p else s.ages[0]

    # -- per completion ------------------------------------------------------------------
    def observe(self, claim: Claim, now: float, p: PollingSettings) -> None:
        """An order was found final by this claim's poll, at `now`."""
        hi = now - claim.added_at
        if hi < 0:
            return
        due = claim.due_at - claim.added_at
        if not 0.0 <= due <= hi:  # expedited (a push or a sweep): polled when it was told
            due = hi
        lo = min(max(0.0, self._previous_poll(claim, due, p)), due)
        if hi - due > max(LATE_S, 2 * (due - lo)):
            return  # polled long after its time (the daemon was down): says little
        self._pending.append((lo, hi))
        if len(self._pending) >= REFRESH_EVERY and not self._told:
            self._tell()

    def _previous_poll(self, claim: Claim, due: float, p: PollingSettings) -> float:
        """The age of the poll before the one due at `due`: 0 (the adding) for the first."""
        s = self.plan_for(claim.added_at)
        if s is None or s.polling is not p:
            if claim.polls == 0:
                return 0.0
            base = p.initial_delay_s * p.backoff_factor ** min(claim.polls, 64)
            return due - min(p.max_interval_s, base)
        last = s.ages[-1]
        if due > last + s.shifts[-1]:  # past the plan: the inverse of `delay`'s back-off
            return max(due - s.cap, last + (due - last) / s.factor - s.last_gap)
        k = bisect.bisect_right(s.bounds, due) - 1  # the poll that found it final
        if k <= 0:
            return 0.0
        return s.ages[k - 1] + shift_of(claim.order_id) * s.shifts[k - 1]

    def _tell(self) -> None:
        self._told = True
        self._notify()

    # -- refresh (cadence_memory) ---------------------------------------------------------
    def take(self) -> list[tuple[float, float]]:
        """The completions observed since the last take: (after age, by age) each."""
        out = list(self._pending)
        self._pending.clear()
        self._told = False
        return out

    def adopt(self, sketch: Sketch, schedule: Schedule | None, since: float) -> None:
        """Orders added from `since` (wall clock; -inf: every order) follow `schedule`."""
        self.sketch = sketch
        old = self.schedule
        if schedule is None or (old is not None and old.polling is not schedule.polling):
            self._plans, self._since = [], []  # learning off, or a reload: no old plan holds
        elif not self._plans and since > -math.inf:
            self._plans, self._since = [None], [-math.inf]  # orders begun on the back-off
        if schedule is not None:
            self._plans.append(schedule)
            self._since.append(since)
            del self._plans[:-KEEP_PLANS], self._since[:-KEEP_PLANS]
        self.schedule = schedule
