"""The global limiter: even spacing plus a hard sliding-window log."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from orderwatch.core.rate_limit import GRANTED
from orderwatch.devtools.simulator import max_in_window
from orderwatch.polling.client import QUICK_CONNECT_S
from orderwatch.polling.limiter import SpacedLimiter


@pytest.mark.slow
@pytest.mark.serial
async def test_spacing_and_window_under_contention() -> None:
    """100 concurrent callers at 40/s: never more than 40 in any 1 s window, evenly spaced."""
    lim = SpacedLimiter(40, start_full=False)
    stamps: list[float] = []

    async def caller() -> None:
        await lim.acquire()
        stamps.append(time.monotonic())

    await asyncio.gather(*(caller() for _ in range(100)))
    assert max_in_window(stamps) <= 40
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    # no bursts: a late timer is made up by at most CATCH_UP_S of closer spacing
    assert min(gaps) >= (lim.interval_s - lim.catch_up_s) * 0.95


async def test_starts_with_window_full() -> None:
    """A new limiter waits out one window first: a restart cannot add to its predecessor's."""
    t0 = time.monotonic()
    lim = SpacedLimiter(1000)
    await lim.acquire()
    assert time.monotonic() - t0 >= lim.window_s * 0.99


async def test_hard_log_caps_bunching_after_a_stall() -> None:
    """If sends were late and bunched, the log still refuses a (R+1)th send in one window."""
    now = [0.0]
    lim = SpacedLimiter(5, start_full=False, clock=lambda: now[0])
    granted = []
    for _ in range(5):  # five grants, evenly spaced
        now[0] = lim.earliest(now[0])
        assert lim.try_acquire()
        granted.append(now[0])
    # ...that all left late, within 10 ms (as if the loop had stalled and then released
    # them): each is counted when it leaves
    left = [granted[-1] + 0.1 + 0.002 * i for i in range(5)]
    for at, grant in zip(left, granted, strict=True):
        now[0] = at
        recount = lim.confirm(grant)
        assert recount is not None
        await recount
    assert lim.earliest(now[0]) > now[0] + lim.interval_s  # the spacing alone would allow one
    assert lim.earliest(now[0]) == left[0] + lim.window_s


def test_fractional_rate_spacing() -> None:
    """Below one per second the spacing alone holds the rate (one per 1/R seconds)."""
    lim = SpacedLimiter(0.5, start_full=False, clock=lambda: 0.0)
    assert lim.capacity == 1 and abs(lim.interval_s - 2.04) < 1e-9


def test_try_acquire_keeps_the_window_and_spacing() -> None:
    """The no-wait path obeys the same rules: at 5/s on a fake clock asked every millisecond
    for 3 s, no 1 s window holds more than 5 and sends are a full interval apart."""
    now = [0.0]
    lim = SpacedLimiter(5, start_full=False, clock=lambda: now[0])
    sent = []
    for ms in range(3000):
        now[0] = ms / 1000
        if lim.try_acquire():
            sent.append(now[0])
    assert 14 <= len(sent) <= 15
    assert max_in_window(sent) <= 5
    assert min(b - a for a, b in itertools.pairwise(sent)) >= lim.interval_s - lim.catch_up_s


async def test_try_acquire_never_passes_a_queued_caller() -> None:
    """While a caller waits inside `acquire`, `try_acquire` says no even when a slot is free,
    so the waiters keep their arrival order."""
    now = [0.0]
    lim = SpacedLimiter(1000, start_full=False, clock=lambda: now[0])
    assert lim.try_acquire()  # the next slot is an interval away
    queued = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0)  # it is inside `acquire`, asleep until its slot
    now[0] = 1.0
    assert lim.earliest(now[0]) <= now[0]  # a slot is free now, but `queued` came first
    assert not lim.try_acquire()
    await queued
    assert lim.try_acquire()


async def test_a_send_that_leaves_late_is_counted_when_it_leaves() -> None:
    """Granted at 0 but held up (a new connection, a stalled loop) until 0.3: counted at 0,
    a third send was allowed at 1.02 and the server saw three within 0.72 s at 2/s. Confirmed
    when its connection is ready, the late send is counted at 0.3, and the third waits."""
    now = [0.0]
    lim = SpacedLimiter(2, start_full=False, clock=lambda: now[0])

    async def granted_now() -> float:
        assert lim.try_acquire()
        stamp = GRANTED.get()
        assert stamp is not None
        return stamp

    late = await asyncio.create_task(granted_now())  # the task that sends late
    now[0] = 0.3
    recount = lim.confirm(late)
    assert recount is not None
    await recount
    now[0] = 0.51
    assert lim.try_acquire()
    assert lim.confirm() is None  # on time: nothing to do
    now[0] = lim.window_s
    assert not lim.try_acquire()  # 0.3 and 0.51 fill (0.3, 1.32]
    assert lim.earliest(now[0]) == 0.3 + lim.window_s
    assert lim.confirm() is None  # confirmed already: nothing granted in this task


@pytest.mark.parametrize("rate", [0.5, 1, 1.5, 2.5, 10, 1000, 100_000])
def test_a_quick_connection_is_well_inside_every_limiters_tolerance(rate: float) -> None:
    """The client asks the limiter about a send only when its connection took
    QUICK_CONNECT_S or longer: a send that quick must be one no limiter would count again."""
    assert SpacedLimiter(rate).margin > 10 * QUICK_CONNECT_S
    pg = pytest.importorskip("orderwatch.store.cluster_limiter", reason="psycopg not installed")
    assert pg.PostgresLimiter(None, rate).late_limit_s > 5 * QUICK_CONNECT_S
