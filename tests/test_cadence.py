"""The learned cadence: the sketch of completion ages, the plan made from it, the per-poll
lookup, and its memory in the store (restart, replicas)."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from orderwatch.config.models import PollingSettings
from orderwatch.core.errors import StoreError
from orderwatch.devtools.simulator import SimOptions, running_simulator
from orderwatch.polling.answers import Answer, Kind
from orderwatch.polling.cadence import (
    MIN_COMPLETIONS,
    Cadence,
    Schedule,
    floor_of,
    make_schedule,
    shift_of,
)
from orderwatch.polling.cadence_memory import KEY, CadenceMemory
from orderwatch.polling.cadence_plan import backoff_ages, latency_quantile
from orderwatch.polling.cadence_sketch import Distribution, Sketch, bin_of
from orderwatch.polling.policy import Reschedule, decide, error_delay
from orderwatch.store.base import Claim, Store
from orderwatch.store.sqlite import SqliteStore

from harness import API_KEY, claim_at, running_daemon, settings_for, states, until

T0 = 1_700_000_000.0


def polling(**kw: object) -> PollingSettings:
    base: dict[str, object] = {
        "initial_delay": "1s",
        "backoff_factor": 1.5,
        "max_interval": "10s",
        "jitter": 0.1,
    }
    return PollingSettings.model_validate({**base, **kw})


P = polling()


def seen_by(ages: list[float], completions: list[float]) -> list[tuple[float, float]]:
    """What polling at `ages` learns of these completion ages: (last PROCESSING, final)."""
    out = []
    for t in completions:
        k = next(i for i, a in enumerate(ages) if a >= t)
        out.append((ages[k - 1] if k else 0.0, ages[k]))
    return out


def backoff(p: PollingSettings = P) -> list[float]:
    return backoff_ages(1e6, p.initial_delay_s, p.backoff_factor, p.max_interval_s)


def uniform(n: int, lo: float, hi: float, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(lo, hi) for _ in range(n)]


def log_uniform(n: int, lo: float, hi: float, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [math.exp(rng.uniform(math.log(lo), math.log(hi))) for _ in range(n)]


def learned(completions: list[float], p: PollingSettings = P) -> Schedule:
    """The schedule a daemon polling with the back-off would learn from these completions."""
    s = make_schedule(Sketch().add(seen_by(backoff(p), completions)), p)
    assert s is not None
    return s


def gaps(ages: tuple[float, ...]) -> list[float]:
    return [b - a for a, b in zip((0.0, *ages), ages, strict=False)]


def claim(**kw: object) -> Claim:
    return claim_at(T0, **kw)


def poll_by(cadence: Cadence, p: PollingSettings, completion: float, oid: str) -> list[float]:
    """The ages at which the daemon's decisions poll an order completing at `completion`."""
    rng = random.Random(oid)
    age, polls, ages = cadence.first_delay(p), 0, []
    while True:
        ages.append(age)
        if age >= completion:
            return ages
        d = decide(
            Answer(Kind.PROCESSING, 200),
            claim(order_id=oid, polls=polls),
            T0 + age,
            p,
            rng,
            cadence,
        )
        assert isinstance(d, Reschedule)
        age, polls = d.next_poll_at - T0, d.polls


# -- the plan --------------------------------------------------------------------------
def test_uniform_completions_plan_about_a_fixed_interval() -> None:
    """Completions spread evenly over 0.5-40 s give evenly spaced polls: a fixed interval."""
    s = learned(uniform(1000, 0.5, 40))
    inner = gaps(s.ages)[1:-1]  # the first and last gap meet the edges of the spread
    assert max(inner) / min(inner) < 1.3
    assert abs(sum(inner) / len(inner) / s.plan.fixed_s - 1) < 0.15


def test_two_kinds_of_order_plan_two_cadences() -> None:
    """80% done in 1-5 s, 20% in 1-5 min: a poll as the first kind is done, none in the quiet
    minute between, then a steady interval for the second kind; the median latency a
    fraction of a fixed interval's at the same budget, the p99 no worse."""
    rng = random.Random(3)
    done = [rng.uniform(1, 5) if rng.random() < 0.8 else rng.uniform(60, 300) for _ in range(1000)]
    p = polling(max_interval="1m")
    s = learned(done, p)
    assert s.ages[0] <= 5.5
    assert not [a for a in s.ages if 15 < a < 50]
    late = [g for a, g in zip(s.ages, gaps(s.ages), strict=True) if 70 < a < 290]
    assert max(late) / min(late) < 1.3
    assert s.plan.p50_s < s.plan.fixed_p50_s / 2
    assert s.plan.p99_s <= s.plan.fixed_p99_s * 1.05


def test_a_long_tail_plans_a_late_first_poll_not_a_back_off() -> None:
    """Log-uniform from 1 s to an hour: the plan polls first where a third have completed,
    then steadily; its median latency well below a fixed interval's, its p99 close to it
    and a fraction of the back-off's (whose gaps grow to max_interval where orders still
    complete)."""
    p = polling(initial_delay="2s", backoff_factor=2, max_interval="5m")
    done = log_uniform(1000, 1, 3600)
    s = learned(done, p)
    assert s.ages[0] > 20
    inner = gaps(s.ages)[1:-1]
    assert max(inner) / min(inner) < 1.3
    assert s.plan.p50_s < s.plan.fixed_p50_s * 0.7
    assert s.plan.p99_s < s.plan.fixed_p99_s * 1.1
    dist = Distribution(Sketch().add(seen_by(backoff(p), done)))
    assert s.plan.p99_s < latency_quantile(dist, backoff(p), 0.99) / 2


def test_the_budget_is_the_back_offs_and_holds() -> None:
    """Polling by the learned cadence spends the GETs per order the back-off spent on the same
    completions: in the plan's arithmetic and counted over orders polled by `decide`."""
    rng = random.Random(5)
    mix = [rng.uniform(0.5, 3) if rng.random() < 0.8 else rng.uniform(30, 60) for _ in range(2000)]
    for shape in (uniform(2000, 0.5, 40), log_uniform(2000, 0.5, 40), mix):
        s = learned(shape[:600])
        assert abs(s.plan.gets / s.plan.budget - 1) < 0.01
        cadence = Cadence()
        cadence.adopt(Sketch(), s, -math.inf)
        fresh = shape[600:]
        ours = sum(len(poll_by(cadence, P, t, f"O-{i}")) for i, t in enumerate(fresh))
        theirs = sum(len(poll_by(Cadence(), P, t, f"O-{i}")) for i, t in enumerate(fresh))
        assert abs(ours / theirs - 1) < 0.05, (ours, theirs)


def test_the_floor_holds() -> None:
    """Every completion at one instant (a burst of polls would see them soonest): no two
    polls of one order come closer than initial_delay, jitter included."""
    p = polling(initial_delay="2s", jitter=0.3)
    s = make_schedule(Sketch().add([(5.0, 5.0)] * 200), p)
    assert s is not None and min(gaps(s.ages)) >= 2.0 and s.ages[0] >= 2.0
    cadence = Cadence()
    cadence.adopt(Sketch(), s, -math.inf)
    for i in range(50):
        ages = poll_by(cadence, p, 400.0, f"O-{i}")
        assert min(b - a for a, b in itertools.pairwise(ages)) >= 2.0 - 1e-9
        assert ages[0] >= 2.0


def test_below_min_completions_the_back_off_is_used() -> None:
    """Until MIN_COMPLETIONS orders have completed, the configured back-off is the cadence;
    with `learn: false`, always."""
    few = Sketch().add([(0.0, 3.0)] * (MIN_COMPLETIONS - 1))
    assert make_schedule(few, P) is None
    enough = few.add([(0.0, 3.0)])
    assert make_schedule(enough, P) is not None
    assert make_schedule(enough, polling(learn=False)) is None
    cadence = Cadence()
    assert cadence.delay(P, "O-1", T0, T0 + 5.0, random.Random(1)) is None
    assert cadence.first_delay(P) == 1.0
    steady = polling(jitter=0)
    assert poll_by(cadence, steady, 10.0, "O-1") == backoff(steady)[:5]


def test_decide_follows_the_schedule_and_errors_keep_their_back_off() -> None:
    """A PROCESSING answer is polled again at the next planned age (shifted by the order's
    jitter); past the plan the gaps grow by backoff_factor up to max_interval; an error
    still backs off on its own."""
    s = learned(uniform(400, 0.5, 40))
    cadence = Cadence()
    cadence.adopt(Sketch(), s, -math.inf)
    rng = random.Random(1)
    for k in (0, 3, len(s.ages) - 2):
        d = decide(Answer(Kind.PROCESSING, 200), claim(), T0 + s.ages[k], P, rng, cadence)
        assert isinstance(d, Reschedule)
        want = s.ages[k + 1] + shift_of("O-1") * s.shifts[k + 1]
        assert d.next_poll_at - T0 == pytest.approx(want)
    late = decide(Answer(Kind.PROCESSING, 200), claim(), T0 + 5000, P, rng, cadence)
    assert isinstance(late, Reschedule) and 9.0 <= late.next_poll_at - (T0 + 5000) <= 11.0
    err = decide(Answer(Kind.SERVER_ERROR, 500), claim(error_streak=1), T0 + 5, P, rng, cadence)
    assert isinstance(err, Reschedule)
    assert err.next_poll_at - (T0 + 5) == pytest.approx(
        error_delay(P, 2, random.Random(1)), rel=0.25
    )


def test_a_changed_shape_is_learned_within_a_window() -> None:
    """An account whose orders took 1-5 s and now take 1-2 minutes: within a window of
    completions of the new kind the old has faded and the plan polls for minutes."""
    p = polling(max_interval="30s")
    fast = Sketch().add(seen_by(backoff(p), uniform(2000, 1, 5)))
    before = make_schedule(fast, p)
    assert before is not None and before.ages[-1] < 10
    after_few = make_schedule(fast.add(seen_by(backoff(p), uniform(50, 60, 120, seed=4))), p)
    slow = fast.add(seen_by(backoff(p), uniform(1000, 60, 120, seed=5)))
    after = make_schedule(slow, p)
    assert after_few is not None and after is not None
    assert after.ages[-1] >= 115
    assert Distribution(slow).cdf(10) < 0.5 < Distribution(fast).cdf(10)  # the old has faded
    assert len([a for a in after.ages if a < 10]) < len([a for a in before.ages if a < 10])


def test_an_order_keeps_the_plan_it_began_under() -> None:
    """A new plan is for orders added from then on: one under way keeps its own (switching
    mid-way costs extra polls), and one begun on the back-off keeps the back-off."""
    a = learned(uniform(400, 0.5, 40))
    b = learned(log_uniform(400, 0.5, 40))
    assert a.ages[:3] != b.ages[:3]
    cadence = Cadence()
    cadence.adopt(Sketch(), a, T0 + 100)  # learned in this process: earlier orders backed off
    cadence.adopt(Sketch(), b, T0 + 200)
    rng = random.Random(1)
    assert cadence.plan_for(T0) is None and cadence.delay(P, "O-1", T0, T0 + 300, rng) is None
    assert cadence.plan_for(T0 + 150) is a and cadence.plan_for(T0 + 250) is b
    for added, plan in ((T0 + 150, a), (T0 + 250, b)):
        d = cadence.delay(P, "O-1", added, added + plan.ages[1], rng)
        assert d == pytest.approx(plan.ages[2] + shift_of("O-1") * plan.shifts[2] - plan.ages[1])
    assert cadence.first_delay(P) == b.ages[0]


# -- what is observed ----------------------------------------------------------------
def test_a_completion_is_spread_between_the_two_polls_around_it() -> None:
    """The back-off's third poll (at 2.5 s... 4.75 s) found it final: it completed after the
    second, and the sketch says so, not only at 4.75 s."""
    cadence = Cadence()
    due = T0 + backoff()[2]
    cadence.observe(claim(due_at=due, polls=2), due + 0.01, P)
    ((lo, hi),) = cadence.take()
    assert lo == pytest.approx(backoff()[1]) and hi == pytest.approx(backoff()[2] + 0.01)
    sketch = Sketch().add([(lo, hi)])
    assert set(sketch.weights) == set(range(bin_of(lo), bin_of(hi) + 1))


def test_a_poll_long_after_its_time_teaches_nothing() -> None:
    """An order found final an hour after it was due (the daemon was down) is not taken to
    have completed in that hour; an expedited one (a push) counts at its poll."""
    cadence = Cadence()
    cadence.observe(claim(due_at=T0 + 1, polls=0), T0 + 3600, P)
    cadence.observe(claim(due_at=T0 + 10, polls=3), T0 + 10 + 7, P)  # 7 s late, gap 3.4 s
    assert cadence.take() == []
    cadence.observe(claim(due_at=0.0, polls=0), T0 + 7, P)  # expedited: due at EXPEDITED_AT
    assert cadence.take() == [(0.0, 7.0)]


def test_the_sketch_keeps_its_weights_through_json() -> None:
    """The stored form gives the same sketch back; another format is refused."""
    s = Sketch().add(seen_by(backoff(), log_uniform(300, 0.5, 40)))
    back = Sketch.from_json(s.to_json())
    assert back.seen == 300 and back.weights.keys() == s.weights.keys()
    assert all(back.weights[i] == pytest.approx(w, rel=1e-3) for i, w in s.weights.items())
    with pytest.raises(ValueError):
        Sketch.from_json('{"format": 99}')
    with pytest.raises(ValueError):
        Sketch.from_json("not json")


# -- memory: restart and replicas ---------------------------------------------------------
async def test_a_learned_cadence_survives_a_restart(tmp_path: Path) -> None:
    """A daemon learns from 60 completions and stops; the next one reads the sketch back and
    polls a new order by it from its first poll (not at initial_delay)."""
    ids = [f"O-LEARN{i:02d}" for i in range(60)]
    rng = random.Random(7)
    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        for oid in ids:
            rs.sim.create([oid], complete_after=rng.uniform(2.0, 3.0))
        poll = {"initial_delay": "100ms", "backoff_factor": 1.5, "max_interval": "5s"}
        settings = settings_for(tmp_path, rs.base_url, polling=poll)
        async with running_daemon(settings) as d:
            await d.add_orders(ids)

            async def learned_enough() -> bool:
                ended = all(s != "pending" for s in (await states(d, ids)).values())
                return ended and await stored_seen(d.store) >= MIN_COMPLETIONS

            await until(learned_enough, timeout=60)
        async with running_daemon(settings) as d:
            assert d.store is not None
            stored = Sketch.from_json(await d.store.get_meta(KEY))
            assert stored.seen == len(ids)  # the rest were merged at the stop
            s = d.cadence.schedule
            assert s is not None
            assert s.ages == make_schedule(stored, settings.polling).ages  # type: ignore[union-attr]
            assert s.ages[0] > 1.0  # the back-off's first poll would be at 0.1 s
            rs.sim.create(["O-NEW"], complete_after=300)
            wall_minus_mono = time.time() - time.monotonic()
            await d.add_orders(["O-NEW"])
            (row,) = await d.store.get_orders(["O-NEW"])
            assert row.next_poll_at == pytest.approx(row.added_at + s.ages[0])

            def polls() -> list[float]:
                return [
                    t + wall_minus_mono - row.added_at for t, o in rs.sim.requests if o == "O-NEW"
                ]

            async def three() -> bool:
                return len(polls()) >= 3

            await until(three, timeout=60)
        ages = polls()
        for k in (0, 1, 2):  # none before its place in the plan (one late moves the rest on)
            assert ages[k] >= s.ages[k] - s.shifts[k] - 0.02
        assert min(b - a for a, b in itertools.pairwise(ages)) >= s.floor - 0.02


async def stored_seen(store: Store | None) -> int:
    assert store is not None
    return Sketch.from_json(await store.get_meta(KEY)).seen


def feed(cadence: Cadence, completions: list[float], prefix: str) -> None:
    for i, t in enumerate(completions):
        cadence.observe(claim(order_id=f"{prefix}{i}", due_at=T0 + t, polls=0), T0 + t, P)


async def test_replicas_merge_into_one_sketch(two_stores: tuple[Store, Store]) -> None:
    """Two replicas merging what they saw at the same moment: the stored sketch holds both,
    and each plans from both (the fast orders one saw, the slow ones the other saw)."""
    a, b = two_stores
    ca, cb = Cadence(), Cadence()
    ma, mb = CadenceMemory(a, ca, lambda: P), CadenceMemory(b, cb, lambda: P)
    for _ in range(3):
        feed(ca, uniform(30, 1, 3), "A")
        feed(cb, uniform(20, 30, 40), "B")
        await asyncio.gather(ma.refresh(), mb.refresh())
    stored = Sketch.from_json(await a.get_meta(KEY))
    assert stored.seen == 150
    await asyncio.gather(ma.refresh(), mb.refresh())  # nothing new: each reads the merge
    for c in (ca, cb):
        assert c.sketch.seen == 150 and c.schedule is not None
        assert c.schedule.ages[0] < 3 and c.schedule.ages[-1] >= 30


async def test_a_reload_plans_for_the_new_bounds(sqlite_store: SqliteStore) -> None:
    """New polling settings: the back-off until the plan is made again, then a plan within
    the new bounds (a longer initial_delay is the new floor)."""
    current = [P]
    cadence = Cadence()
    memory = CadenceMemory(sqlite_store, cadence, lambda: current[0])
    feed(cadence, uniform(80, 1, 20), "O")
    await memory.refresh()
    assert cadence.schedule is not None and min(gaps(cadence.schedule.ages)) < 3
    current[0] = polling(initial_delay="3s")
    assert cadence.delay(current[0], "O-1", T0, T0 + 2.0, random.Random(1)) is None
    assert cadence.first_delay(current[0]) == 3.0
    await memory.refresh()
    s = cadence.schedule
    assert s is not None and s.polling is current[0] and min(gaps(s.ages)) >= 3.0
    assert floor_of(current[0]) == 3.0


class Flaky:
    """A store whose small facts can be made to fail, as a store that is down does."""

    def __init__(self, store: Store) -> None:
        self.store, self.down = store, False

    async def get_meta(self, key: str) -> str | None:
        if self.down:
            raise StoreError("down")
        return await self.store.get_meta(key)

    async def update_meta(self, key: str, update: Callable[[str | None], str]) -> str:
        if self.down:
            raise StoreError("down")
        return await self.store.update_meta(key, update)


async def test_a_store_error_keeps_what_was_learned_for_later(sqlite_store: SqliteStore) -> None:
    """A merge that fails loses no completions: the next one sends them."""
    flaky = Flaky(sqlite_store)
    cadence = Cadence()
    memory = CadenceMemory(flaky, cadence, lambda: P)  # type: ignore[arg-type]
    feed(cadence, uniform(60, 1, 5), "O")
    flaky.down = True
    with capture_logs() as logs:
        await memory.refresh()
    assert [e["event"] for e in logs] == ["cadence.not_saved"]
    assert cadence.schedule is None
    flaky.down = False
    await memory.refresh()
    assert await stored_seen(sqlite_store) == 60 and cadence.schedule is not None
