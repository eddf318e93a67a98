"""When to poll next, and when an order is over: pure functions of an answer, a claim and now."""

from __future__ import annotations

import random
from typing import NamedTuple

from orderwatch.config.models import PollingSettings
from orderwatch.polling.answers import Answer, Kind
from orderwatch.polling.cadence import Cadence
from orderwatch.store.base import Claim


class Reschedule(NamedTuple):
    """Poll again at `next_poll_at`. NamedTuples, not frozen dataclasses: one decision is made
    per poll (see `store.base.Claim`)."""

    next_poll_at: float
    polls: int
    error_streak: int
    first_404_at: float | None
    last_error: str | None
    last_body: bytes | None


class Finish(NamedTuple):
    state: str  # final | expired | not_found
    final_status: str  # COMPLETED | FAILED | EXPIRED | NOT_FOUND


class Release(NamedTuple):
    """Not this order's fault (429, auth): put it back, due when the pause ends."""


Decision = Reschedule | Finish | Release


def _jittered(delay: float, jitter: float, rng: random.Random) -> float:
    return delay * (1.0 + rng.uniform(-jitter, jitter)) if jitter else delay


def cadence_delay(p: PollingSettings, polls: int, rng: random.Random) -> float:
    """Normal polling: initial_delay * factor^polls, capped, jittered."""
    base = min(p.max_interval_s, p.initial_delay_s * p.backoff_factor ** min(polls, 64))
    return _jittered(base, p.jitter, rng)


def error_delay(p: PollingSettings, streak: int, rng: random.Random) -> float:
    """Error retries: their own budget, from 1 s (or initial_delay) doubling, capped."""
    first = max(1.0, min(p.initial_delay_s, p.max_interval_s))
    base = min(p.max_interval_s, first * 2 ** min(streak - 1, 64))
    return _jittered(base, p.jitter, rng)


def decide(
    answer: Answer,
    claim: Claim,
    now: float,
    p: PollingSettings,
    rng: random.Random,
    cadence: Cadence | None = None,
) -> Decision:
    """What happens to the order after this answer; `cadence`: the learned one, if any."""
    kind = answer.kind
    if kind is Kind.FINAL:
        assert answer.order_status is not None
        return Finish("final", answer.order_status)
    if kind in (Kind.RATE_LIMITED, Kind.AUTH, Kind.REFUSED):
        return Release()
    deadline = claim.added_at + p.give_up_after_s
    if kind is Kind.NOT_FOUND:
        first_404 = claim.first_404_at if claim.first_404_at is not None else now
        if now - first_404 >= p.not_found_grace_s:
            return Finish("not_found", "NOT_FOUND")
        if now >= deadline:
            return Finish("expired", "EXPIRED")
        streak = claim.error_streak + 1
        nxt = min(now + error_delay(p, streak, rng), first_404 + p.not_found_grace_s)
        return Reschedule(
            min(nxt, deadline), claim.polls, streak, first_404, "http 404", answer.body
        )
    if now >= deadline:
        return Finish("expired", "EXPIRED")
    if kind is Kind.PROCESSING:
        polls = claim.polls + 1
        learned = cadence.delay(p, claim.order_id, claim.added_at, now, rng) if cadence else None
        nxt = now + (cadence_delay(p, polls, rng) if learned is None else learned)
        return Reschedule(min(nxt, deadline), polls, 0, None, None, answer.body)
    streak = claim.error_streak + 1
    nxt = now + error_delay(p, streak, rng)
    return Reschedule(
        min(nxt, deadline), claim.polls, streak, claim.first_404_at, answer.detail, None
    )
