"""What the status page reads, gathered from the daemon's parts at one moment, and the one
thing the page does: replay an order's final event, as `orderwatch replay` does.

The request rate comes from the poll counters, sampled every few seconds by a background
task, so nothing is added to a poll's hot path. Every list is bounded (LIST_ROWS), and each
is read from an index: a page view costs a few small reads whatever the store holds.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog

from orderwatch.config.models import Settings
from orderwatch.core.aio import wait_any
from orderwatch.core.errors import StoreError
from orderwatch.delivery.outbox import Deliverer
from orderwatch.ops.metrics import Metrics
from orderwatch.ops.push_wiring import push_report
from orderwatch.ops.status_page import Pause, StatusSnapshot
from orderwatch.polling.gate import Gate
from orderwatch.store.base import DeadDelivery, OrderRow, Store

log = structlog.get_logger("orderwatch.admin")
LIST_ROWS = 20  # rows in each list of the page
SAMPLE_S = 5.0  # how often the request count is sampled
WINDOW_S = 60.0  # the span the page reports the request rate over
STORE_WAIT_S = 10.0  # a page view gives a hanging store this long, then says so


class RequestWindow:
    """How many requests were sent in about the last WINDOW_S seconds, from a running total
    sampled every SAMPLE_S (the window reported is exact: from the sample it starts at)."""

    def __init__(
        self,
        total: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
        span_s: float = WINDOW_S,
    ) -> None:
        self._total, self._clock, self._span_s = total, clock, span_s
        self._samples: deque[tuple[float, int]] = deque([(clock(), total())])

    def sample(self) -> None:
        now = self._clock()
        self._samples.append((now, self._total()))
        # Keep the newest sample at least a span old (where the window starts) and the later.
        while len(self._samples) > 1 and self._samples[1][0] <= now - self._span_s:
            self._samples.popleft()

    def last(self) -> tuple[int, float]:
        """(requests, seconds): sent since the window's start, a span ago or a little more
        (less while the process is younger than that)."""
        start, before = self._samples[0]
        return self._total() - before, self._clock() - start

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.sample()
            await wait_any(stop, timeout=SAMPLE_S)


@dataclass(frozen=True, slots=True)
class ReplayResult:
    queued: int  # deliveries queued (one per final event and configured sink)
    replayed: list[str]  # the orders whose events were queued again
    no_event: list[str]  # orders asked for that have no final event (unknown or pending)


def pauses_of(gate: Gate, now: float) -> list[Pause]:
    """The pauses polling is in now, with their reason and end (wall-clock)."""
    found = []
    if (left := gate.rate_paused_for()) > 0:
        reason = f"the Runa API answered 429 (too many requests), {gate.streak_429} in a row"
        found.append(Pause("429 pause", reason, now + left))
    if gate.auth_failed:
        found.append(Pause("API key refused", gate.refusal, None))
    return found


@dataclass(frozen=True, slots=True)
class _Lists:
    """What the page reads from the store."""

    orders: dict[str, int] = field(default_factory=dict)
    deliveries: dict[str, int] = field(default_factory=dict)
    oldest_pending: list[OrderRow] = field(default_factory=list)
    recent_finals: list[OrderRow] = field(default_factory=list)
    dead: list[DeadDelivery] = field(default_factory=list)
    store_problem: str | None = None


class StatusService:
    """The daemon's side of the status page."""

    def __init__(
        self,
        store: Store,
        gate: Gate,
        deliverer: Deliverer,
        metrics: Metrics,
        settings: Settings,
        readiness: Callable[[], tuple[bool, str]],
        wall: Callable[[], float],
    ) -> None:
        self._store, self._gate, self._deliverer = store, gate, deliverer
        polls = metrics.poll.polls
        self._requests = RequestWindow(lambda: sum(polls.by_kind.values()))
        self._rate = settings.rate_limit.requests_per_second  # a reload does not change it
        self._shared = settings.state_dsn is not None
        self._store_label = (
            "PostgreSQL (shared by every replica)"
            if self._shared
            else f"SQLite in {settings.state_dir}"
        )
        self._readiness, self._wall = readiness, wall

    async def count_requests(self, stop: asyncio.Event) -> None:
        """Sample the request count until `stop` (a background task of the daemon)."""
        await self._requests.run(stop)

    async def order_report(self, order_id: str) -> dict[str, Any] | None:
        """What `GET /orders/{id}` shows: the order's row and its deliveries, never a payload."""
        rows = await self._store.get_orders([order_id])
        if not rows:
            return None
        deliveries = await self._store.get_deliveries([order_id])
        push = await push_report(self._store, order_id)
        return {**asdict(rows[0]), "deliveries": [asdict(x) for x in deliveries], "push": push}

    async def snapshot(self) -> StatusSnapshot:
        now = self._wall()
        lists = await self._lists()
        ready, reason = self._readiness()
        requests, window_s = self._requests.last()
        return StatusSnapshot(
            now=now,
            store=self._store_label,
            ready=ready,
            reason=reason,
            requests=requests,
            window_s=window_s,
            rate_limit=self._rate,
            shared_limit=self._shared,
            pauses=pauses_of(self._gate, now),
            can_replay=bool(self._deliverer.sinks),
            orders=lists.orders,
            deliveries=lists.deliveries,
            oldest_pending=lists.oldest_pending,
            recent_finals=lists.recent_finals,
            dead=lists.dead,
            store_problem=lists.store_problem,
        )

    async def _lists(self) -> _Lists:
        """The counts and lists, or none and why when the store does not answer."""
        s = self._store
        try:
            async with asyncio.timeout(STORE_WAIT_S):
                return _Lists(
                    orders=await s.counts(),
                    deliveries=await s.delivery_counts(),
                    oldest_pending=await s.oldest_pending(LIST_ROWS),
                    recent_finals=await s.recent_finals(LIST_ROWS),
                    dead=await s.dead_deliveries(LIST_ROWS),
                )
        except (StoreError, TimeoutError) as e:
            problem = str(e) or f"no answer in {STORE_WAIT_S:g} s"
            log.error("store.unavailable", path="/", error=problem)
            return _Lists(store_problem=problem)

    async def replay(self, order_ids: Sequence[str]) -> ReplayResult:
        """Queue the final events of these orders again to every configured sink, due now,
        with the same event ids (what `orderwatch replay` does); the deliverer sends them."""
        ids = list(dict.fromkeys(order_ids))
        have = [i for i in ids if await self._store.get_event(i) is not None]
        sinks = [sink.id for sink in self._deliverer.sinks]
        queued = await self._store.replay(have, sinks, self._wall()) if have and sinks else 0
        if queued:
            self._deliverer.wake()
            log.info("admin.replayed", orders=have, deliveries=queued)
        return ReplayResult(queued, have, [i for i in ids if i not in set(have)])
