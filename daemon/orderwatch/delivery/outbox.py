"""The outbox worker: deliver every queued (event, sink) pair at least once.

Each sink is served by its own loop with its own concurrency bound and its own claims, so a
slow or dead endpoint never delays another sink, and never the poller (which only writes the
outbox and calls `wake`). An attempt's result is recorded with the claim's fencing token: a
sender that lost its lease records nothing, and the delivery is retried by whoever holds it.
A loop never waits more than MAX_IDLE_WAIT_S without asking the store again, so deliveries
queued by another process (`orderwatch replay`) are seen without a wake-up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import structlog

from orderwatch.core.aio import until_stopped, wait_any
from orderwatch.core.errors import StoreError, store_backoff
from orderwatch.core.pulse import Pulse
from orderwatch.delivery.metrics import DeliveryMetrics
from orderwatch.delivery.sinks.base import AttemptResult, Sink
from orderwatch.store.base import DeliveryClaim, DeliveryState, Store

log = structlog.get_logger("orderwatch.delivery")
MAX_IDLE_WAIT_S = 1.0  # replays queued by other processes are seen within this
DEFAULT_LEASE_S = 300.0


def next_step(
    sink: Sink, attempts_before: int, result: AttemptResult, now: float
) -> tuple[DeliveryState, float | None]:
    """After an attempt: delivered, retry at a time, or dead (schedule spent).
    N delays in the schedule give N+1 attempts; Retry-After can only lengthen a delay."""
    if result.delivered:
        return "delivered", None
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
        lease_s: float = DEFAULT_LEASE_S,
        metrics: DeliveryMetrics | None = None,
    ) -> None:
        self.store = store
        self.sinks = list(sinks)
        self.owner = owner
        self.clock = clock
        self.lease_s = lease_s
        self.metrics = metrics or DeliveryMetrics()
        self._wakes = {s.id: asyncio.Event() for s in self.sinks}
        self.progress = Pulse()  # an attempt of the run loop ended (tests wait on it)

    def wake(self) -> None:
        """New deliveries were committed: every sink looks for work now."""
        for event in self._wakes.values():
            event.set()

    # -- the daemon's loop ---------------------------------------------------------------
    async def run(self, stop: asyncio.Event, shutdown_timeout_s: float = 5.0) -> None:
        """Deliver until `stop` is set; then give in-flight attempts `shutdown_timeout_s` and
        cancel the rest (their leases are released by the daemon, or expire)."""
        if not self.sinks:
            await stop.wait()
            return
        async with asyncio.TaskGroup() as tg:
            for sink in self.sinks:
                tg.create_task(self._sink_loop(sink, stop, shutdown_timeout_s), name=sink.id)

    async def _sink_loop(self, sink: Sink, stop: asyncio.Event, grace_s: float) -> None:
        inflight: set[asyncio.Task[None]] = set()
        wake = self._wakes[sink.id]

        def done(task: asyncio.Task[None]) -> None:
            inflight.discard(task)
            wake.set()  # a slot is free
            self.progress()

        try:
            await until_stopped(stop, self._look(sink, stop, inflight, done))
        finally:
            await _settle(inflight, grace_s)

    async def _look(
        self,
        sink: Sink,
        stop: asyncio.Event,
        inflight: set[asyncio.Task[None]],
        done: Callable[[asyncio.Task[None]], None],
    ) -> None:
        """Claim what is due while there are free slots; start an attempt for each."""
        wake = self._wakes[sink.id]
        backoff = 0.0
        while not stop.is_set():
            wake.clear()  # before looking: a wake() from now on is not lost
            free = sink.max_concurrency - len(inflight)
            try:
                claims = await self._claim(sink, free) if free > 0 else []
            except StoreError as e:
                backoff = store_backoff(backoff)
                log.error("store.unavailable", sink=sink.id, error=str(e), retry_in_s=backoff)
                await wait_any(stop, timeout=backoff)
                continue
            backoff = 0.0
            for claim in claims:
                task = asyncio.create_task(self._attempt(sink, claim))
                inflight.add(task)
                task.add_done_callback(done)
            # Fewer claims than free slots: nothing else is due. As many: we are full.
            await self._idle(sink, stop, full=len(inflight) >= sink.max_concurrency)

    async def _idle(self, sink: Sink, stop: asyncio.Event, full: bool) -> None:
        """Wait for stop, a wake, a free slot, the next due time, or MAX_IDLE_WAIT_S."""
        timeout = MAX_IDLE_WAIT_S
        if not full:
            try:
                nxt = await self.store.next_delivery_due_at([sink.id])
            except StoreError:
                nxt = None  # _claim logs store trouble once per pass
            if nxt is not None:
                timeout = min(timeout, max(0.0, nxt - self.clock()))
        await wait_any(stop, self._wakes[sink.id], timeout=max(timeout, 0.001))

    async def _claim(self, sink: Sink, limit: int) -> list[DeliveryClaim]:
        return await self.store.claim_deliveries(
            self.clock(), limit, self.owner, self._lease_for(sink), [sink.id]
        )

    def _lease_for(self, sink: Sink) -> float:
        """A claim must outlive its attempt, or another sender could start a second one."""
        bound = sink.timeout_s
        return self.lease_s if bound is None else max(self.lease_s, 2 * bound + 1)

    # -- one attempt ---------------------------------------------------------------------
    async def _attempt(self, sink: Sink, claim: DeliveryClaim) -> None:
        try:
            result = await sink.attempt(claim.event)
        except Exception as e:  # a bug in a sink: count it as a failed attempt, keep going
            log.exception("delivery.sink_error", order_id=claim.event.order_id, sink=sink.id)
            result = AttemptResult(False, f"error {type(e).__name__}")
        now = self.clock()
        state, next_at = next_step(sink, claim.attempts, result, now)
        try:
            recorded = await self.store.record_delivery(claim, now, state, result.outcome, next_at)
        except StoreError as e:  # the lease expires and the attempt is made again
            log.error("store.unavailable", order_id=claim.event.order_id, error=str(e))
            return
        self._account(sink, claim, result, state, now, recorded)

    def _account(
        self,
        sink: Sink,
        claim: DeliveryClaim,
        result: AttemptResult,
        state: DeliveryState,
        now: float,
        recorded: bool,
    ) -> None:
        """Metrics, and the one canonical line per attempt (plus one loud line at the end)."""
        self.metrics.deliveries.labels(state if state != "pending" else "retry").inc()
        if result.delivered:
            self.metrics.delivery_seconds.observe(max(0.0, now - claim.event.created_at))
        fields = {
            "order_id": claim.event.order_id,
            "event_id": claim.event.event_id,
            "sink": sink.id,
            "attempt": claim.attempts + 1,
            "outcome": result.outcome,
            "state": state,
        }
        if not recorded:  # fenced out: another sender holds it now; our result is void
            log.warning("delivery.attempt", **fields, recorded=False)
            return
        log.info("delivery.attempt", **fields)
        if state == "dead":
            log.error("delivery.dead", **fields, hint="retry schedule spent; `orderwatch replay`")

    # -- one-shot ------------------------------------------------------------------------
    async def run_until_idle(self) -> None:
        """Deliver everything due now, every sink at once, then return. Retries that fall due
        later are left queued (call again, or move the injected clock, to send them)."""
        await asyncio.gather(*(self._drain(sink) for sink in self.sinks))

    async def _drain(self, sink: Sink) -> None:
        try:
            while claims := await self._claim(sink, sink.max_concurrency):
                await asyncio.gather(*(self._attempt(sink, c) for c in claims))
        except StoreError as e:  # what is left stays queued for the next run
            log.error("store.unavailable", sink=sink.id, error=str(e))

    async def warn_stranded(self) -> None:
        """Pending deliveries of a sink no longer configured (a webhook URL or a command's
        argv changed: the sink id with it) are sent by nobody: say so once, at start."""
        configured = {s.id for s in self.sinks}
        try:
            pending = await self.store.pending_deliveries_by_sink()
        except StoreError as e:
            log.error("store.unavailable", error=str(e))
            return
        stranded = {sink: n for sink, n in pending.items() if sink not in configured}
        if stranded:
            log.warning(
                "delivery.stranded",
                sinks=stranded,
                hint="no configured sink has these ids any more; `orderwatch replay ID` sends"
                " an order's event to the sinks configured now",
            )


async def _settle(inflight: set[asyncio.Task[None]], grace_s: float) -> None:
    """Give in-flight attempts a bounded time, then cancel them and wait for them to unwind."""
    if not inflight:
        return
    tasks = set(inflight)
    _, pending = await asyncio.wait(tasks, timeout=grace_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
