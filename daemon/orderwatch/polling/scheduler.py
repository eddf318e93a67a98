"""The polling loop: claim due orders earliest-first, GET each once through gate and limiter,
and apply what the policy decides. The scheduler decides *when*, the client *what the API
said*, the policy *what it means*; this module only moves claims between them. Held claims
(`held`), the end of an order (`finish`) and the wall clock's steps (`clock`) are parts of
their own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from orderwatch.config.models import PollingSettings
from orderwatch.core.aio import until_stopped, wait_any
from orderwatch.core.errors import StoreError, store_backoff
from orderwatch.core.pulse import Pulse
from orderwatch.core.rate_limit import RateLimiter
from orderwatch.delivery.payload_files import write_payload
from orderwatch.polling.answers import Answer
from orderwatch.polling.cadence import Cadence
from orderwatch.polling.client import SWEEP_S, RunaClient
from orderwatch.polling.clock import ClockWatch, pull_forward
from orderwatch.polling.expedite import Expedited
from orderwatch.polling.finish import Finisher
from orderwatch.polling.gate import Gate, hold_limiter, tell_gate
from orderwatch.polling.held import HOLD_S, HeldClaims
from orderwatch.polling.metrics import PollMetrics
from orderwatch.polling.pause_memory import PauseMemory
from orderwatch.polling.policy import Release, Reschedule, decide
from orderwatch.polling.prefetch import Prefetch
from orderwatch.polling.sweep import Sweep
from orderwatch.store.base import Claim, Store

log = structlog.get_logger("orderwatch.poller")
_stdlog = logging.getLogger("orderwatch.poller")  # the same logger, for its cached level

MAX_IDLE_WAIT_S = 1.0  # orders added by other processes are seen within this


@dataclass
class PollerDeps:
    store: Store
    client: RunaClient
    limiter: RateLimiter
    gate: Gate
    polling: PollingSettings
    output_dir: Path
    sinks: Sequence[str]
    owner: str
    max_concurrency: int
    rate: float
    lease_s: float = 60.0  # longer than any request plus its wait in the prefetch queue
    request_timeout_s: float = 10.0
    metrics: PollMetrics = field(default_factory=PollMetrics)
    pauses: PauseMemory | None = None  # where the gate's pauses are kept across restarts
    wall: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)
    on_final: Callable[[], None] = lambda: None
    hold_s: float = HOLD_S  # how long a claim may stay in memory between polls (held.py)
    write_payload: Callable[[Path, str, bytes], Path] = write_payload  # final payload files
    progress: Pulse = field(default_factory=Pulse)  # a worker's poll ended (tests wait on it)
    cadence: Cadence | None = None  # the learned cadence (None: the configured back-off)


class Poller:
    def __init__(self, deps: PollerDeps) -> None:
        self.d = deps
        # Prefetch up to 8 claims a worker, at most two seconds of sends: enough that workers
        # rarely find the queue empty while a claim is under way, short enough that a claim
        # never waits in memory anywhere near its lease.
        self._prefetch = max(1, min(8 * deps.max_concurrency, math.ceil(2 * deps.rate)))
        self._lease_s = deps.lease_s
        self._ready: Prefetch[tuple[Claim, Reschedule | None]] = Prefetch(self._prefetch)
        self._held = HeldClaims(deps.store, deps.lease_s, deps.request_timeout_s, deps.hold_s)
        self.expedited = Expedited(self._held, self._ready, self.wake, self._prefetch)
        self._finisher = Finisher(
            deps.store,
            deps.output_dir,
            deps.sinks,
            deps.metrics,
            lambda: self.d.polling,
            deps.on_final,
            self._held.store_due,
            deps.write_payload,
            None if deps.cadence is None else self._completed,
        )
        self._clock = ClockWatch(deps.wall)
        self._batch = max(1, self._prefetch // 2)  # claim when half the queue is free
        self._low = self._prefetch - self._batch  # ...that is, when it holds this many or fewer
        self._room = asyncio.Event()
        self._room_wanted = False  # the dispatcher waits for `_low`; whoever sees it wakes it
        self._wake = asyncio.Event()
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._soonest = math.inf  # the soonest reschedule since the scheduler last looked
        self._wake_at = math.inf  # when the waiting scheduler looks again by itself
        self.heartbeat = time.monotonic()  # the dispatcher's last pass: the watchdog checks it
        self.store_failed_at_stop = False  # the hand-back found the store gone
        self.sweep = Sweep(deps, self.found)  # the list endpoint, when it saves requests

    @property
    def holding(self) -> int:  # claims waiting in memory for their next poll (held.py)
        return len(self._held)

    def _completed(self, claim: Claim, now: float) -> None:
        assert self.d.cadence is not None
        self.d.cadence.observe(claim, now, self.d.polling)

    def set_polling(self, polling: PollingSettings) -> None:
        """A reload changed the cadence: polls from now on follow it."""
        self.d.polling = polling

    def wake(self) -> None:
        """New orders were added in this process: look for due work now."""
        self._held.store_unknown()
        self._wake.set()

    def found(self, leased: Collection[str] = ()) -> None:
        """Orders may be final (`Store.expedite` made the unleased ones due first): claim
        them now; those among `leased` this process holds for a later poll are due now too."""
        if leased:
            self._held.expedite(leased)
        self.wake()

    # -- loops ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, shutdown_timeout_s: float) -> None:
        """Poll until `stop` is set; then let in-flight requests finish within the timeout."""
        workers = [
            asyncio.create_task(self._worker(), name=f"poll-worker-{i}")
            for i in range(self.d.max_concurrency)
        ]
        self._held.enabled = True
        sweeping = asyncio.create_task(self.sweep.run(stop), name="sweep")
        try:
            await until_stopped(stop, self._dispatch(stop))
        finally:
            sweeping.cancel()  # no list request after a stop
            self._held.enabled = False  # polls still in flight write what they learn
            queued = self._ready.take_all()  # never started: no GET for them after a stop
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained(), shutdown_timeout_s)
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, sweeping, return_exceptions=True)
            claims = [*queued, *self._held.take_all()]
            self.store_failed_at_stop = not await self._held.hand_back(claims)

    async def _drained(self) -> None:
        while self._busy:
            self._idle.clear()
            await self._idle.wait()

    async def _dispatch(self, stop: asyncio.Event) -> None:
        claim = True
        backoff = 0.0
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            step = self._clock.step_back()
            if claim or step:
                try:
                    if step:
                        await self._pull_forward(step)
                    got = await self._claim_some()
                except StoreError as e:
                    backoff = store_backoff(backoff)
                    log.error("store.unavailable", error=str(e), retry_in_s=backoff)
                    await wait_any(stop, timeout=backoff)
                    continue
                backoff = 0.0
                if got:
                    continue
            claim = await self._wait_for_work(stop)

    async def _pull_forward(self, step: float) -> None:
        for c, unsaved in self._held.take_all():  # their times are the store's to move
            self._held.write(c, unsaved)
        await self.d.store.flush()
        now = self.d.wall()
        await pull_forward(self.d.store, self.d.polling, self._lease_s, step, now)
        self._clock.settle(now)

    async def _claim_some(self) -> int:
        if self.expedited.wanted and not self.d.gate.closed():  # pushed: ahead of the batching
            return await self.expedited.claim(
                self.d.store, self.d.wall(), self.d.owner, self._lease_s
            )
        room = self._ready.room()
        if room < self._batch and self._ready:
            return 0  # claim in batches: one transaction per poll was the hot spot
        if room <= 0 or self.d.gate.rate_paused_for() > 0:
            return 0
        if self.d.gate.auth_failed:
            room = min(room, 1) if not self._ready and not self._busy else 0
            if not room:
                return 0
        # Earliest due first, held or not. Held claims due before anything the store could
        # hold go first, without asking it; then the store's due orders; then, when it had
        # no more, the held claims due by now.
        now = self.d.wall()
        held = self._held
        moved = held.move_due(self._ready, min(now, held.store_clear_until()), room)
        room -= moved
        if not room:
            return moved
        held.claim_started()
        claims = await self.d.store.claim_due(now, room, self.d.owner, self._lease_s)
        self.expedited.queue(claims)  # expedited (pushed) ones at the front
        if len(claims) < room:  # the store had nothing else due by `now`
            held.store_clear(now)
            moved += held.move_due(self._ready, self.d.wall(), room - len(claims))
        else:
            held.store_unknown()
        return len(claims) + moved

    async def _wait_for_work(self, stop: asyncio.Event) -> bool:
        """Wait until there may be work. False when the wait ran out and the store had nothing
        due by now: the next pass then asks only when the next order is due (which also shows
        orders other processes added) instead of claiming too, one store call a second idle."""
        if self.expedited.wanted and not self.d.gate.closed():
            return True  # a push came while the last claim ran: its wake was for this
        if self._ready.room() < self._batch and self._ready:
            self._room.clear()
            self._room_wanted = True
            self._wake.clear()  # nothing can be claimed until there is room anyway
            await wait_any(stop, self._room, self._wake, timeout=MAX_IDLE_WAIT_S)
            self._room_wanted = False
            return True
        timeout = MAX_IDLE_WAIT_S
        nxt: float | None = None
        store_ok = True
        self._wake.clear()  # before asking: a wake from now on is not lost
        try:
            nxt = await self.d.store.next_due_at()
        except StoreError:
            store_ok = False  # wait the full second; the claim after it reports the error
        # A reschedule not yet written (or one of a leased order: the store answers with the
        # lease's end) can be sooner than what the store says.
        soonest, self._soonest = self._soonest, math.inf
        soonest = min(soonest, self._held.soonest())
        if soonest < math.inf:
            nxt = soonest if nxt is None else min(nxt, soonest)
        if nxt is not None:
            timeout = min(timeout, max(0.0, nxt - self.d.wall()))
        pause = self.d.gate.rate_paused_for()
        if pause > 0:
            timeout = min(pause, MAX_IDLE_WAIT_S)
        elif self.d.gate.auth_failed:
            # One probe at a time holds the one claim there is; what is due waits for it.
            # Looking when the next order is due would be looking again at once, and again.
            timeout = MAX_IDLE_WAIT_S
        if not self._ready.room():
            timeout = min(timeout, 0.05)
        self._wake_at = self.d.wall() + timeout
        woken = await wait_any(stop, self._wake, timeout=max(timeout, 0.001))
        self._wake_at = math.inf
        return woken or not store_ok or pause > 0 or (nxt is not None and nxt <= self.d.wall())

    async def _worker(self) -> None:
        ready = self._ready
        while True:
            claim, unsaved = ready.popleft() if ready else await ready.get()
            if self._room_wanted and len(ready) <= self._low:
                self._room_wanted = False
                self._room.set()
            self._busy += 1
            try:
                await self.poll_one(claim, unsaved)
            except StoreError as e:
                log.error("store.unavailable", order_id=claim.order_id, error=str(e))
            except Exception:  # a bug must cost one poll, not the worker
                log.exception("poll.crashed", order_id=claim.order_id)
                await self._finisher.crashed(claim, unsaved, self.d.wall(), self.d.rng)
            finally:
                self._busy -= 1
                self.d.progress()
                if not self._busy:
                    self._idle.set()

    # -- one poll ------------------------------------------------------------------------
    async def poll_one(self, claim: Claim, unsaved: Reschedule | None = None) -> None:
        """Send one GET for a claimed order (through gate and limiter) and apply the answer.
        `unsaved`: what earlier polls under this lease decided and nobody wrote yet."""
        d = self.d
        if self._lease_too_short(claim):
            self._held.leave_unsent(claim, unsaved)
            return
        # The hot path awaits nothing before the GET: gate open, a send free at once.
        waited = not d.gate.open()
        probe = await d.gate.enter() if waited else False
        try:
            t0 = t1 = time.monotonic()
            if not d.limiter.try_acquire():
                await d.limiter.acquire()
                t1 = time.monotonic()
                d.metrics.limiter_wait.inc(t1 - t0)
                waited = True
            if waited:
                if not probe and d.gate.closed():
                    await self._held.give_back(claim, unsaved)  # a 429 or 401 came meanwhile
                    return
                if self._lease_too_short(claim):
                    self._held.leave_unsent(claim, unsaved)  # it waited out a long pause
                    return
            answer = await d.client.get_order(claim.order_id)
            d.metrics.polls.answered(answer.kind, time.monotonic() - t1)
            now = d.wall()
            pause = tell_gate(d.gate, d.metrics, answer, now)
        finally:
            if probe:
                d.gate.leave_probe()
        if pause is not None:  # the pauses changed: share them, and keep them for a restart
            if pause:
                await hold_limiter(d.limiter, pause)
            if d.pauses is not None:
                await d.pauses.remember()
        decision = decide(answer, claim, now, d.polling, d.rng, d.cadence)
        if isinstance(decision, Reschedule):  # still PROCESSING (or an error): no await
            self._reschedule(claim, answer, decision, now, unsaved)
        elif isinstance(decision, Release):
            await self._held.give_back(claim, unsaved)
        else:
            await self._finisher.finish(claim, answer, decision, now, unsaved)

    def _lease_too_short(self, claim: Claim) -> bool:
        """Too close to the lease's end to finish a request in time: leave the order alone,
        whoever holds it next (this worker waited through a pause or lost the store)."""
        return self.d.wall() >= claim.lease_until - self.d.request_timeout_s - SWEEP_S - 0.5

    def _reschedule(
        self,
        claim: Claim,
        answer: Answer,
        decision: Reschedule,
        now: float,
        unsaved: Reschedule | None,
    ) -> None:
        """Poll it again: held until then, or written (without waiting for the write)."""
        if decision.last_body is None and unsaved is not None:
            decision = decision._replace(last_body=unsaved.last_body)  # None: keep the last
        if not self._held.hold(claim, decision):
            self._held.write(claim, decision)
        if (at := decision.next_poll_at) < self._soonest:
            self._soonest = at
            if at < self._wake_at:  # sooner than the scheduler means to look again
                self._wake.set()
        if _stdlog.isEnabledFor(logging.DEBUG):  # skip building the event at info
            log.debug(
                "order.polled",
                order_id=claim.order_id,
                outcome=answer.detail,
                next_in_s=round(decision.next_poll_at - now, 3),
            )

    async def run_until_idle(self) -> None:
        """Poll every order that is due now, one after another, until none is due (tests, wait)."""
        while claims := await self.d.store.claim_due(
            self.d.wall(), self.d.max_concurrency, self.d.owner, self._lease_s
        ):
            await asyncio.gather(*(self.poll_one(c) for c in claims))
            await self.d.store.flush()
