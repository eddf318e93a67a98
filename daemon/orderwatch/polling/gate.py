"""Pauses that apply to all polling at once: 429 back-off and the auth-failure probe mode.

Every request passes `await gate.enter()` before the limiter. While rate-paused nobody passes
until the pause ends. While auth-paused one request at a time passes, as a probe, and only when
its back-off has run out; its answer either clears the pause or doubles the back-off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from orderwatch.core.aio import wait_any
from orderwatch.core.errors import StoreError
from orderwatch.core.pulse import Pulse
from orderwatch.core.rate_limit import RateLimiter
from orderwatch.polling.answers import Answer, Kind
from orderwatch.polling.metrics import PollMetrics

log = structlog.get_logger("orderwatch.gate")

MIN_429_PAUSE_S = 5.0
MIN_GROWN_429_CAP_S = 4 * MIN_429_PAUSE_S  # however short polling.max_interval is
MAX_RETRY_AFTER_S = 3600.0  # a Retry-After beyond an hour is a server bug, not a plan
MAX_PAUSE_S = MAX_RETRY_AFTER_S  # what a resumed pause may still last (a stored time is data)


class Gate:
    def __init__(self, max_interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.max_interval_s = max_interval_s
        self.paused_until = 0.0
        self.streak_429 = 0
        self.auth_failed = False  # every request refused: the key, or the API version
        self.refusal = ""  # why, for /readyz and systemd's STATUS
        self._probe_backoff_s = 1.0
        self._next_probe_at = 0.0
        self._probe = asyncio.Lock()
        self._changed = asyncio.Event()
        self.changed = Pulse()  # a pause began or ended (tests wait on it)

    @property
    def next_probe_at(self) -> float:
        """When the next auth probe may pass (clock time)."""
        return self._next_probe_at

    @property
    def probe_backoff_s(self) -> float:
        """The wait between auth probes now (it doubles after each failed one)."""
        return self._probe_backoff_s

    @property
    def ready(self) -> bool:
        """False while auth-paused (what /readyz and systemd STATUS report)."""
        return not self.auth_failed

    def closed(self) -> bool:
        """True while no ordinary request may be sent (rate-paused or auth-paused)."""
        return self.auth_failed or self.rate_paused_for() > 0

    def open(self) -> bool:
        """True when `enter()` would return False at once: the hot path skips it."""
        return not self.auth_failed and self.paused_until <= self._clock()

    def rate_paused_for(self) -> float:
        return max(0.0, self.paused_until - self._clock())

    async def enter(self) -> bool:
        """Wait until a request may go. Returns True if this request is an auth probe: the
        caller must then report its outcome and call `leave_probe()`."""
        while True:
            now = self._clock()
            wait = self.paused_until - now
            if self.auth_failed:
                wait = max(wait, self._next_probe_at - now)
                if wait <= 0 and not self._probe.locked():
                    await self._probe.acquire()
                    if self.auth_failed:
                        return True
                    self._probe.release()
                    continue
            if wait <= 0 and not self.auth_failed:
                return False
            await self._sleep(wait if wait > 0 else 0.5)

    async def _sleep(self, seconds: float) -> None:
        self._changed.clear()
        await wait_any(self._changed, timeout=min(seconds, 5.0))

    def leave_probe(self) -> None:
        if self._probe.locked():
            self._probe.release()

    def on_success(self) -> None:
        """Any valid answer from the API: resets the 429 streak and ends an auth pause."""
        self.streak_429 = 0
        if self.auth_failed:
            self.auth_failed = False
            self._probe_backoff_s = 1.0
            log.info("api.auth_recovered")
            self._changed.set()
            self.changed()

    def on_rate_limited(self, retry_after_s: float | None) -> float:
        """A 429: pause everyone at least 5 s, doubling while 429s continue up to
        polling.max_interval (20 s at least); honour Retry-After."""
        self.streak_429 += 1
        grown = MIN_429_PAUSE_S * 2.0 ** min(self.streak_429 - 1, 32)
        honoured = min(retry_after_s or 0.0, MAX_RETRY_AFTER_S)
        cap = max(self.max_interval_s, MIN_GROWN_429_CAP_S)  # longer while they continue
        pause = max(min(grown, cap), MIN_429_PAUSE_S, honoured)
        self.paused_until = max(self.paused_until, self._clock() + pause)
        log.warning("api.rate_limited", pause_s=round(pause, 3), streak=self.streak_429)
        self.changed()
        return pause

    def on_auth_failure(self, http_status: int, detail: str = "") -> None:
        """A 401/403, or an answer that refuses every request alike (a retired API version,
        plain HTTP): pause everything; probe one request at a time with back-off."""
        if not self.auth_failed:
            self.auth_failed = True
            if http_status in (401, 403):
                self.refusal = "the Runa API rejects the API key (401/403); probing"
                log.error(
                    "api.auth_failed",
                    http_status=http_status,
                    hint="the Runa API key is invalid or lacks access; polling paused, "
                    "probing until it works (a reload with a new key resumes at once)",
                )
            else:
                self.refusal = (
                    f"the Runa API refuses every request ({detail}): check runa.api_version"
                    " and runa.base_url; probing"
                )
                log.error(
                    "api.refused",
                    http_status=http_status,
                    reason=detail,
                    hint="check runa.api_version and that runa.base_url is https://; polling"
                    " paused, probing until it works (a restart applies a new api_version)",
                )
        else:
            self._probe_backoff_s = min(self._probe_backoff_s * 2.0, self.max_interval_s)
        self._next_probe_at = self._clock() + self._probe_backoff_s
        self.changed()

    def resume(self, pause_s: float, streak_429: int, auth_failed: bool, refusal: str) -> None:
        """Take up the pauses a previous process was in (see pause_memory)."""
        self.streak_429 = max(0, streak_429)
        if pause_s > 0:
            self.paused_until = max(self.paused_until, self._clock() + min(pause_s, MAX_PAUSE_S))
        if auth_failed:
            self.auth_failed = True
            self.refusal = refusal or "the Runa API refused the last process's requests; probing"
            self._next_probe_at = self._clock()  # one probe at once: the key may work again

    def reset_auth(self) -> None:
        """A reload brought a new key: probe at once."""
        self._next_probe_at = 0.0
        self._probe_backoff_s = 1.0
        self._changed.set()


# -- what an answer means for the pauses (the scheduler tells the gate after each GET) --------
VALID = (Kind.PROCESSING, Kind.FINAL, Kind.NOT_FOUND, Kind.LISTED)


def tell_gate(gate: Gate, metrics: PollMetrics, answer: Answer, now: float) -> float | None:
    """Tell the gate what the API said. The pause a 429 started; 0.0 when the pauses changed
    otherwise (a refusal, or the first valid answer after a pause); None when they did not."""
    if answer.kind in VALID:
        metrics.polls.last_success = now
        if not gate.streak_429 and not gate.auth_failed:
            return None
        gate.on_success()
        return 0.0
    if answer.kind is Kind.RATE_LIMITED:
        metrics.rate_limited.inc()
        return gate.on_rate_limited(answer.retry_after_s)
    if answer.kind in (Kind.AUTH, Kind.REFUSED):
        gate.on_auth_failure(answer.http_status or 401, answer.detail)
        return 0.0
    return None


async def hold_limiter(limiter: RateLimiter, pause_s: float) -> None:
    """Share a 429's pause with whoever else the limiter serves (other replicas); the
    gate has paused this process already, so a store error here costs nothing else."""
    try:
        await limiter.hold(pause_s)
    except StoreError as e:
        log.warning("limiter.hold_failed", error=str(e))
