"""The polling policy: pure decisions from (answer, claim, now)."""

from __future__ import annotations

import random

from orderwatch.config.models import PollingSettings
from orderwatch.polling.answers import Answer, Kind
from orderwatch.polling.policy import (
    Finish,
    Release,
    Reschedule,
    cadence_delay,
    decide,
    error_delay,
)
from orderwatch.store.base import Claim

from harness import claim_at

P = PollingSettings.model_validate(
    {
        "initial_delay": "2s",
        "backoff_factor": 2,
        "max_interval": "60s",
        "jitter": 0,
        "give_up_after": "1h",
        "not_found_grace": "10m",
    }
)
T0 = 1_000_000.0


def claim(**kw: object) -> Claim:
    return claim_at(T0, **kw)


def rng() -> random.Random:
    return random.Random(1)


def test_cadence_grows_by_factor_and_caps() -> None:
    """Normal polling: initial_delay * factor^polls, never above max_interval."""
    assert [cadence_delay(P, n, rng()) for n in range(6)] == [2, 4, 8, 16, 32, 60]


def test_jitter_stays_within_fraction() -> None:
    """Jitter moves a delay by at most the configured fraction."""
    p = P.model_copy(update={"jitter": 0.1})
    delays = [cadence_delay(p, 2, random.Random(i)) for i in range(200)]
    assert min(delays) >= 8 * 0.9 and max(delays) <= 8 * 1.1 and len(set(delays)) > 100


def test_processing_advances_cadence_and_clears_errors() -> None:
    """A PROCESSING answer counts a poll, resets the error streak, keeps the body."""
    d = decide(
        Answer(Kind.PROCESSING, 200, body=b"{}"), claim(polls=1, error_streak=3), T0 + 10, P, rng()
    )
    assert d == Reschedule(T0 + 10 + 8, 2, 0, None, None, b"{}")


def test_errors_have_their_own_budget() -> None:
    """Server errors back off by their own streak and do not advance the normal cadence."""
    d = decide(
        Answer(Kind.SERVER_ERROR, 500, detail="http 500"),
        claim(polls=4, error_streak=2),
        T0 + 10,
        P,
        rng(),
    )
    assert isinstance(d, Reschedule)
    assert (d.polls, d.error_streak, d.last_error) == (4, 3, "http 500")
    assert d.next_poll_at == T0 + 10 + error_delay(P, 3, rng()) == T0 + 10 + 8


def test_final_finishes() -> None:
    """COMPLETED and FAILED end the order as final with that status."""
    assert decide(Answer(Kind.FINAL, 200, "FAILED"), claim(), T0, P, rng()) == Finish(
        "final", "FAILED"
    )


def test_rate_limit_and_auth_release_without_counting() -> None:
    """429 and 401/403 are not the order's fault: it goes back untouched."""
    for kind in (Kind.RATE_LIMITED, Kind.AUTH):
        assert isinstance(decide(Answer(kind, 429), claim(), T0, P, rng()), Release)


def test_not_found_grace() -> None:
    """A 404 starts a grace period; once it has lasted not_found_grace the order ends."""
    d = decide(Answer(Kind.NOT_FOUND, 404), claim(), T0 + 5, P, rng())
    assert isinstance(d, Reschedule) and d.first_404_at == T0 + 5
    late = decide(Answer(Kind.NOT_FOUND, 404), claim(first_404_at=T0), T0 + 600, P, rng())
    assert late == Finish("not_found", "NOT_FOUND")


def test_not_found_polls_at_end_of_grace() -> None:
    """The next poll during a 404 streak is never later than the end of the grace period."""
    p = P.model_copy(update={"not_found_grace_s": 3.0})
    d = decide(
        Answer(Kind.NOT_FOUND, 404), claim(first_404_at=T0, error_streak=9), T0 + 1, p, rng()
    )
    assert isinstance(d, Reschedule) and d.next_poll_at == T0 + 3


def test_valid_answer_after_404_clears_grace() -> None:
    """A PROCESSING answer after 404s resets the not-found clock."""
    d = decide(Answer(Kind.PROCESSING, 200), claim(first_404_at=T0), T0 + 5, P, rng())
    assert isinstance(d, Reschedule) and d.first_404_at is None


def test_give_up_after_expires_and_caps_next_poll() -> None:
    """No poll is scheduled past give_up_after; at the deadline a non-final answer expires it."""
    near = decide(Answer(Kind.PROCESSING, 200), claim(polls=10), T0 + 3590, P, rng())
    assert isinstance(near, Reschedule) and near.next_poll_at == T0 + 3600
    assert decide(Answer(Kind.PROCESSING, 200), claim(), T0 + 3600, P, rng()) == Finish(
        "expired", "EXPIRED"
    )
    assert decide(Answer(Kind.TRANSPORT, None), claim(), T0 + 3600, P, rng()) == Finish(
        "expired", "EXPIRED"
    )
