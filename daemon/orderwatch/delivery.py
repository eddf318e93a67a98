"""The outbox worker: deliver every queued (event, sink) pair at least once.

Each sink is served by its own loop with its own concurrency bound, so a slow or dead
endpoint never delays another sink, and never the poller (which only writes the outbox).
An attempt's result is recorded with the claim's fencing token: a sender that lost its lease
records nothing, and the delivery is retried by whoever holds it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

import structlog

from orderwatch.aio import wait_any
from orderwatch.errors import StoreError
from orderwatch.metrics import Metrics
from orderwatch.sinks.base import AttemptResult, Sink
from orderwatch.store.base import DeliveryClaim, DeliveryState, Store

log = structlog.get_logger("orderwatch.delivery")
MAX_IDLE_WAIT_S = 1.0  # replays queued by other processes are seen within this


def next_step(
    sink: Sink, attempts_before: int, result: AttemptResult, now: float
) -> tuple[DeliveryState, float | None]:
    """After an attempt: delivered, retry at a time, dead (schedule spent), or disabled."""
    if result.delivered:
        return "delivered", None
    if result.disable_sink:
        return "disabled", None
    made = attempts_before + 1
    schedule = sink.retry_schedule_s
    if not result.retry or made > len(schedule):
        return "dead", None
    delay = max(schedule[made - 1], result.retry_after_s or 0.0)
    return "pending", now + delay


class Deliverer:
    def __init__(
        self,
        store: Store,
        sinks: Sequence[Sink],
        *,
        owner: str,
        clock: Callable[[], float] = time.time,
        lease_s: float = 300.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.sinks = list(sinks)
        self.owner = owner
        self.clock = clock
        self.lease_s = lease_s
        self.metrics = metrics or Metrics()
        self._wakes = {s.id: asyncio.Event() for s in self.sinks}
        self._disabled: set[str] = set()

    def wake(self) -> None:
        """New events were committed: every sink looks for work now."""
        for event in self._wakes.values():
            event.set()

    async def run(self, stop: asyncio.Event, shutdown_timeout_s: float = 5.0) -> None:
        if not self.sinks:
            await stop.wait()
            return
        async with asyncio.TaskGroup() as tg:
            for sink in self.sinks:
                tg.create_task(self._sink_loop(sink, stop, shutdown_timeout_s), name=sink.id)

    async def _sink_loop(self, sink: Sink, stop: asyncio.Event, grace_s: float) -> None:
        inflight: set[asyncio.Task[None]] = set()

        def done(task: asyncio.Task[None]) -> None:
            inflight.discard(task)
            self._wakes[sink.id].set()  # a slot is free

        while not stop.is_set():
            free = sink.max_concurrency - len(inflight)
            claims = await self._claim(sink, free) if free > 0 else []
            for claim in claims:
                task = asyncio.create_task(self._attempt(sink, claim))
                inflight.add(task)
                task.add_done_callback(done)
            if not claims:
                await self._idle(sink, stop, busy=free <= 0)
        if inflight:
            _, pending = await asyncio.wait(inflight, timeout=grace_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _claim(self, sink: Sink, limit: int) -> list[DeliveryClaim]:
        if sink.id in self._disabled:
            return []
        try:
            return await self.store.claim_deliveries(
                self.clock(), limit, self.owner, self.lease_s, [sink.id]
            )
        except StoreError as e:
            log.error("store.unavailable", error=str(e))
            return []

    async def _idle(self, sink: Sink, stop: asyncio.Event, busy: bool) -> None:
        timeout = 0.05 if busy else MAX_IDLE_WAIT_S
        if not busy:
            with contextlib.suppress(StoreError):
                nxt = await self.store.next_delivery_due_at([sink.id])
                if nxt is not None:
                    timeout = min(timeout, max(0.0, nxt - self.clock()))
        wake = self._wakes[sink.id]
        wake.clear()
        await wait_any(stop, wake, timeout=max(timeout, 0.001))

    async def _attempt(self, sink: Sink, claim: DeliveryClaim) -> None:
        result = await sink.attempt(claim.event)
        now = self.clock()
        state, next_at = next_step(sink, claim.attempts, result, now)
        try:
            recorded = await self.store.record_delivery(claim, now, state, result.outcome, next_at)
        except StoreError as e:
            log.error("store.unavailable", order_id=claim.event.order_id, error=str(e))
            return
        self._account(sink, claim, result, state, now, recorded)

    def _account(
        self,
        sink: Sink,
        claim: DeliveryClaim,
        result: AttemptResult,
        state: str,
        now: float,
        recorded: bool,
    ) -> None:
        self.metrics.deliveries.labels(state if state != "pending" else "retry").inc()
        if result.delivered:
            self.metrics.delivery_seconds.observe(max(0.0, now - claim.event.created_at))
        fields = dict(
            order_id=claim.event.order_id,
            event_id=claim.event.event_id,
            sink=sink.id,
            attempt=claim.attempts + 1,
            outcome=result.outcome,
            state=state,
            recorded=recorded,
        )
        if state == "dead":
            log.error("delivery.dead", **fields)
        elif state == "disabled":
            self._disabled.add(sink.id)
            log.error("delivery.sink_disabled", **fields, hint="endpoint answered 410 Gone")
        else:
            log.info("delivery.attempt", **fields)

    async def run_until_idle(self) -> None:
        """Deliver everything due now (and retries that fall due meanwhile are left)."""
        for sink in self.sinks:
            while claims := await self._claim(sink, sink.max_concurrency):
                await asyncio.gather(*(self._attempt(sink, c) for c in claims))
