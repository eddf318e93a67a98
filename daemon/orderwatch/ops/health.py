"""Is the daemon fit to serve? Readiness (for /readyz, the `orderwatch_ready` gauge and
systemd's STATUS=), the watchdog ping, and the gauges that mirror the store.

Readiness follows the store's write health, not only its reads: a full disk lets reads
through while every write fails, and a daemon that cannot write cannot accept or finish an
order. Each refresh (every few seconds, and at each scrape or probe) writes one small fact."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from orderwatch.core.aio import wait_any
from orderwatch.core.errors import StoreError
from orderwatch.ops.metrics import Metrics
from orderwatch.ops.systemd import Notifier
from orderwatch.polling.gate import Gate
from orderwatch.store.base import Store

log = structlog.get_logger("orderwatch.daemon")
# The scheduler counts as stalled (no more watchdog pings) when it has not passed through its
# loop for this long: longer than one store call may take (PostgreSQL's 30 s bound, SQLite's
# 10 s wait for a lock) plus the claim back-off, so only a wedged loop stops the pings.
SCHEDULER_STALL_S = 40.0
WRITE_PROBE_KEY = "write_probe"


class Health:
    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        notifier: Notifier,
        gate: Gate,
        *,
        heartbeat: Callable[[], float],
        lifecycle: Callable[[], str | None],
        wall: Callable[[], float],
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.notifier = notifier
        self.gate = gate
        self._heartbeat = heartbeat  # monotonic time of the scheduler's last pass
        self._lifecycle = lifecycle  # "starting", "stopping", or None while running
        self._wall = wall
        self.store_problem: str | None = None  # set while the store refuses reads or writes

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): not while starting or stopping, while the store fails, while
        auth-paused, or while rate-paused for long."""
        phase = self._lifecycle()
        if phase is not None:
            return False, phase
        if self.store_problem is not None:
            return False, self.store_problem
        if self.gate.auth_failed:
            return False, self.gate.refusal
        if self.gate.rate_paused_for() > 60:
            return False, "rate limited by the Runa API (429) for more than a minute"
        return True, "ok"

    async def run(self, stop: asyncio.Event) -> None:
        """Pet the watchdog while the loop makes progress; refresh gauges and systemd STATUS.
        The ping never waits for the store: a store that is down or hangs is reported (logs,
        /readyz), and the daemon carries on when it is back, where a watchdog kill would only
        restart it into the same outage."""
        interval = min(5.0, self.notifier.watchdog_interval_s or 5.0)
        while not stop.is_set():
            started = time.monotonic()
            if self.making_progress():
                self.notifier.watchdog()
            else:
                log.error("daemon.stalled", hint="the scheduler loop has not run; no watchdog ping")
            try:
                async with asyncio.timeout(interval):
                    await self.refresh()
            except TimeoutError:
                self.store_down("the state store is not answering")  # its callers log it
            except StoreError as e:
                log.error("store.unavailable", error=str(e))
            await wait_any(stop, timeout=max(0.0, interval - (time.monotonic() - started)))

    def making_progress(self) -> bool:
        """The loop runs (we are here) and the scheduler passed through its loop lately: within
        the longest one store call may take, plus the claim back-off."""
        return time.monotonic() - self._heartbeat() < SCHEDULER_STALL_S

    async def check_store(self) -> None:
        """Read and write the store once; raise StoreError (and be not ready) if it fails."""
        try:
            await self.store.ping()
        except StoreError:
            self.store_down("the state store is unavailable")
            raise
        try:
            await self.store.set_meta(WRITE_PROBE_KEY, f"{self._wall():.0f}")
        except StoreError:
            self.store_down("the state store refuses writes (disk full or read-only?)")
            raise
        self.store_problem = None

    async def refresh(self, deliveries: bool = False) -> dict[str, int]:
        """Gauges from the store, and its write health. Order counts are O(1); delivery counts
        scan, so they are refreshed only when /metrics is scraped."""
        await self.check_store()
        try:
            counts = await self.store.counts()
            oldest = await self.store.oldest_pending_added_at()
            dcounts = await self.store.delivery_counts() if deliveries else None
        except StoreError:
            self.store_down("the state store is unavailable")
            raise
        for state, n in counts.items():
            self.metrics.orders.labels(state).set(n)
        self.metrics.oldest_pending_age.set(0 if oldest is None else self._wall() - oldest)
        if dcounts is not None:
            self.metrics.dead_deliveries.set(dcounts.get("dead", 0))
        ready, why = self.readiness()
        self.metrics.ready.set(1 if ready else 0)
        self.notifier.status(
            f"pending {counts['pending']}, final {counts['final']}, "
            f"expired {counts['expired']}, not_found {counts['not_found']}"
            + ("" if ready else f" - NOT READY: {why}")
        )
        return counts

    def store_down(self, why: str) -> None:
        """Not ready until the store answers again: /readyz, the gauge and STATUS= say so
        (the counts are left as they were: the store cannot tell)."""
        self.store_problem = why
        self.metrics.ready.set(0)
        self.notifier.status(f"NOT READY: {why}")
