"""The polling loop: claim due orders earliest-first, GET each once through gate and limiter,
and apply what the policy decides. The scheduler decides *when*, the client *what the API
said*, the policy *what it means*; this module only moves claims between them."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from orderwatch.aio import until_stopped, wait_any
from orderwatch.answers import Answer, Kind
from orderwatch.client import SWEEP_S, RunaClient
from orderwatch.errors import StoreError, store_backoff
from orderwatch.events import committed_payload, make_event, terminal_data
from orderwatch.gate import Gate
from orderwatch.limiter import RateLimiter
from orderwatch.metrics import Metrics
from orderwatch.payloads import remove_payload, restore_payload, write_payload
from orderwatch.policy import Finish, Release, Reschedule, decide
from orderwatch.prefetch import Prefetch
from orderwatch.settings import PollingSettings
from orderwatch.store.base import GOODBYE_S, Claim, Store

log = structlog.get_logger("orderwatch.poller")
_stdlog = logging.getLogger("orderwatch.poller")  # the same logger, for its cached level

VALID = (Kind.PROCESSING, Kind.FINAL, Kind.NOT_FOUND)
MAX_IDLE_WAIT_S = 1.0  # orders added by other processes are seen within this
HOLD_S = 10.0  # how long after its claim a polled order may stay in memory, unwritten
CLOCK_STEP_S = 5.0  # a step back of the wall clock bigger than this is acted on
_CRASHED = Answer(Kind.INVALID, detail="crashed applying the answer")  # see `_crashed`


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
    metrics: Metrics = field(default_factory=Metrics)
    wall: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)
    on_final: Callable[[], None] = lambda: None


def _progress(r: Reschedule) -> dict[str, Any]:
    """A decision as the store's reschedule takes it, all but the time."""
    return {
        "polls": r.polls,
        "error_streak": r.error_streak,
        "first_404_at": r.first_404_at,
        "last_error": r.last_error,
        "last_body": r.last_body,
    }


class Poller:
    def __init__(self, deps: PollerDeps) -> None:
        self.d = deps
        # Prefetch up to 8 claims a worker, at most two seconds of sends: enough that workers
        # rarely find the queue empty while a claim is under way (at 2x, 67% of gets found it
        # empty in the overhead bench, 15% at 8x), short enough that a claim never waits in
        # memory anywhere near its lease.
        self._prefetch = max(1, min(8 * deps.max_concurrency, math.ceil(2 * deps.rate)))
        self._lease_s = deps.lease_s
        self._ready: Prefetch[tuple[Claim, Reschedule | None]] = Prefetch(self._prefetch)
        # Held claims: orders still PROCESSING whose next poll falls within HOLD_S of their
        # claim (and well inside its lease). They wait here, leased, for their next poll, and
        # carry what the polls since the claim decided, not yet written (see `_hold`).
        self._held: list[tuple[float, int, Claim, Reschedule]] = []
        self._held_seq = 0
        self._holding = False  # only while `run` polls: `run_until_idle` writes every poll
        # The store had no unleased order due by this when its last claim began (-inf: not
        # known), and nothing written back since is due before `_due_written`: held claims
        # due before both go first without asking it (`_store_clear_until`).
        self._store_clear_at = -math.inf
        self._due_written = math.inf
        self._batch = max(1, self._prefetch // 2)  # claim when half the queue is free
        self._low = self._prefetch - self._batch  # ...that is, when it holds this many or fewer
        self._room = asyncio.Event()
        self._room_wanted = False  # the dispatcher waits for `_low`; whoever sees it wakes it
        self._wake = asyncio.Event()
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._clock_offset = deps.wall() - time.monotonic()  # moves when the wall clock steps
        self._soonest = math.inf  # the soonest reschedule since the scheduler last looked
        self._wake_at = math.inf  # when the waiting scheduler looks again by itself
        self.heartbeat = time.monotonic()  # the dispatcher's last pass: the watchdog checks it
        self.store_failed_at_stop = False  # the hand-back found the store gone

    def wake(self) -> None:
        """New orders were added in this process: look for due work now."""
        self._store_clear_at = -math.inf
        self._wake.set()

    # -- loops ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, shutdown_timeout_s: float) -> None:
        """Poll until `stop` is set; then let in-flight requests finish within the timeout."""
        workers = [
            asyncio.create_task(self._worker(), name=f"poll-worker-{i}")
            for i in range(self.d.max_concurrency)
        ]
        self._holding = True
        try:
            await until_stopped(stop, self._dispatch(stop))
        finally:
            self._holding = False  # polls still in flight write what they learn
            queued = self._take_queued()  # never started: no GET for them after a stop
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained(), shutdown_timeout_s)
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await self._hand_back([*queued, *self._take_held()])

    async def _drained(self) -> None:
        while self._busy:
            self._idle.clear()
            await self._idle.wait()

    def _take_queued(self) -> list[tuple[Claim, Reschedule | None]]:
        return self._ready.take_all()

    def _take_held(self) -> list[tuple[Claim, Reschedule]]:
        held, self._held = self._held, []
        return [(c, unsaved) for _, _, c, unsaved in held]

    async def _hand_back(self, claims: list[tuple[Claim, Reschedule | None]]) -> None:
        """Give unstarted and held claims back and write the queued reschedules, within
        GOODBYE_S (a lost reschedule costs one more GET; one claim at a time, each waiting
        out the store's timeout, took minutes with PostgreSQL down)."""
        try:
            async with asyncio.timeout(GOODBYE_S):
                for c, unsaved in claims:  # held ones go as one batch of queued writes
                    if unsaved is not None:
                        self._write(c, unsaved)  # its due_at is unsaved.next_poll_at
                plain = (c for c, unsaved in claims if unsaved is None)
                await asyncio.gather(*(self.d.store.release(c) for c in plain))
                await self.d.store.flush()
        except (TimeoutError, StoreError) as e:
            self.store_failed_at_stop = True
            log.warning(
                "store.hand_back_failed",
                claims=len(claims),
                error=str(e) or f"no answer in {GOODBYE_S:g}s",
                hint="the leases run out by themselves (polling.lease)",
            )

    async def _dispatch(self, stop: asyncio.Event) -> None:
        claim = True
        backoff = 0.0
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            step = self._wall_step_back()
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

    def _wall_step_back(self) -> float:
        """How far the wall clock stepped back since the last pass (0: not, or by less than
        CLOCK_STEP_S, which slewing and jitter never reach)."""
        offset = self.d.wall() - time.monotonic()
        step = self._clock_offset - offset
        if step > CLOCK_STEP_S:
            return step  # the reference moves once the store has been told
        self._clock_offset = offset
        return 0.0

    async def _pull_forward(self, step: float) -> None:
        """Schedules are wall-clock times: after the clock steps back (NTP fixing a wrong
        RTC, `date -s`), every order looks due that much later. Pull what lies beyond any
        schedule we make (the longest interval, the first delay, a lease) to now. Webhook
        retries are wall-clock times too, and this loop is the process's one watch on the
        clock: waiting retries come `step` sooner (their delays run to hours, so no horizon
        would tell a shifted one from a long one)."""
        for c, unsaved in self._take_held():  # their times are the store's to move
            self._write(c, unsaved)
        await self.d.store.flush()
        p, now = self.d.polling, self.d.wall()
        horizon = max(p.initial_delay_s, p.max_interval_s * (1 + p.jitter), self._lease_s)
        moved = await self.d.store.pull_forward(now + horizon, now)
        retries = await self.d.store.shift_retries(step, now)
        self._clock_offset = now - time.monotonic()
        log.warning(
            "clock.stepped_back",
            seconds=round(step, 1),
            orders_moved=moved,
            retries_moved=retries,
        )

    async def _claim_some(self) -> int:
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
        moved = self._move_held(min(now, self._store_clear_until()), room)
        room -= moved
        if not room:
            return moved
        self._due_written = math.inf
        claims = await self.d.store.claim_due(now, room, self.d.owner, self._lease_s)
        for c in claims:
            self._ready.put((c, None))
        if len(claims) < room:  # the store had nothing else due by `now`
            self._store_clear_at = now
            moved += self._move_held(self.d.wall(), room - len(claims))
        else:
            self._store_clear_at = -math.inf
        return len(claims) + moved

    def _move_held(self, due_by: float, room: int) -> int:
        """Queue up to `room` held claims due by `due_by`, earliest first."""
        moved = 0
        room = min(room, self._ready.room())
        while moved < room and self._held and self._held[0][0] <= due_by:
            _, _, c, unsaved = heapq.heappop(self._held)
            self._ready.put((c, unsaved))
            moved += 1
        return moved

    async def _wait_for_work(self, stop: asyncio.Event) -> bool:
        """Wait until there may be work. False when the wait ran out and the store had nothing
        due by now: the next pass then asks only when the next order is due (which also shows
        orders other processes added) instead of claiming too, one store call a second idle."""
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
        if self._held:
            soonest = min(soonest, self._held[0][0])
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
                await self._crashed(claim, unsaved)
            finally:
                self._busy -= 1
                if not self._busy:
                    self._idle.set()

    async def _crashed(self, claim: Claim, unsaved: Reschedule | None) -> None:
        """A poll that crashed counts as a bad answer of its order: the error back-off, then
        expired at give_up_after. Left to its lease, an answer that crashes came back at every
        lease's end, forever. Should this fail too, the lease is the last resort."""
        try:
            if not await self.d.store.holds(claim):
                return  # it ended before the crash, or another worker holds it now
            now = self.d.wall()
            decision = decide(_CRASHED, claim, now, self.d.polling, self.d.rng)
            if isinstance(decision, Reschedule):
                last = unsaved.last_body if unsaved is not None else None
                self._store_due(decision.next_poll_at)
                await self.d.store.reschedule(
                    claim, decision.next_poll_at, **_progress(decision._replace(last_body=last))
                )
            elif isinstance(decision, Finish):
                await self._finish(claim, _CRASHED, decision, now, unsaved)
        except Exception as e:
            log.error("poll.crash_not_counted", order_id=claim.order_id, error=type(e).__name__)

    # -- one poll ------------------------------------------------------------------------
    async def poll_one(self, claim: Claim, unsaved: Reschedule | None = None) -> None:
        """Send one GET for a claimed order (through gate and limiter) and apply the answer.
        `unsaved`: what earlier polls under this lease decided and nobody wrote yet."""
        d = self.d
        if self._lease_too_short(claim):
            self._leave_unsent(claim, unsaved)
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
                    await self._give_back(claim, unsaved)  # a 429 or 401 came meanwhile
                    return
                if self._lease_too_short(claim):
                    self._leave_unsent(claim, unsaved)  # it waited out a long pause
                    return
            answer = await d.client.get_order(claim.order_id)
            d.metrics.polls.answered(answer.kind, time.monotonic() - t1)
            now = d.wall()
            pause = self._tell_gate(answer, now)
        finally:
            if probe:
                d.gate.leave_probe()
        if pause:
            await self._hold_limiter(pause)
        decision = decide(answer, claim, now, d.polling, d.rng)
        if isinstance(decision, Reschedule):  # still PROCESSING (or an error): no await
            self._reschedule(claim, answer, decision, now, unsaved)
        elif isinstance(decision, Release):
            await self._give_back(claim, unsaved)
        else:
            await self._finish(claim, answer, decision, now, unsaved)

    def _leave_unsent(self, claim: Claim, unsaved: Reschedule | None) -> None:
        """Too late in its lease to send: whoever holds the order next polls it. What held
        polls learned is still written (fenced: if the lease is gone, it changes nothing)."""
        if unsaved is not None:
            self._write(claim, unsaved._replace(next_poll_at=claim.due_at))

    async def _hold_limiter(self, pause_s: float) -> None:
        """Share a 429's pause with whoever else the limiter serves (other replicas); the
        gate has paused this process already, so a store error here costs nothing else."""
        try:
            await self.d.limiter.hold(pause_s)
        except StoreError as e:
            log.warning("limiter.hold_failed", error=str(e))

    def _lease_too_short(self, claim: Claim) -> bool:
        """Too close to the lease's end to finish a request in time: leave the order alone,
        whoever holds it next (this worker waited through a pause or lost the store)."""
        return self.d.wall() >= claim.lease_until - self.d.request_timeout_s - SWEEP_S - 0.5

    def _tell_gate(self, answer: Answer, now: float) -> float:
        """Tell the gate what the API said; the pause a 429 started, else 0."""
        if answer.kind in VALID:
            self.d.gate.on_success()
            self.d.metrics.polls.last_success = now
        elif answer.kind is Kind.RATE_LIMITED:
            self.d.metrics.rate_limited.inc()
            return self.d.gate.on_rate_limited(answer.retry_after_s)
        elif answer.kind in (Kind.AUTH, Kind.REFUSED):
            self.d.gate.on_auth_failure(answer.http_status or 401, answer.detail)
        return 0.0

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
        if not self._hold(claim, decision):
            self._write(claim, decision)
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

    def _hold(self, claim: Claim, decision: Reschedule) -> bool:
        """Keep the claim for its next poll when that falls within HOLD_S of the claim (and
        so well inside the lease): nothing is written until it leaves memory (a later poll
        falls beyond, it ends, it is given back, the daemon stops). Fast-cycling orders then
        cost the store a claim and a write per HOLD_S, not per poll; a crash loses at most
        HOLD_S of their polls' progress (the poll count, the last body), and they are polled
        again at once at restart."""
        if not self._holding:
            return False
        claimed_at = claim.lease_until - self._lease_s
        hold_until = min(
            claimed_at + HOLD_S,
            claim.lease_until - self.d.request_timeout_s - SWEEP_S - 1.0,
        )
        at = decision.next_poll_at
        if at > hold_until:
            return False
        again = Claim(  # not `_replace`: 1.7 µs against 0.5
            claim.order_id,
            claim.fence,
            at,
            claim.added_at,
            decision.polls,
            decision.error_streak,
            decision.first_404_at,
            claim.lease_until,
        )
        self._held_seq += 1
        heapq.heappush(self._held, (at, self._held_seq, again, decision))
        return True

    def _write(self, claim: Claim, decision: Reschedule) -> None:
        """Not waited for: still PROCESSING, so a lost write costs one repeated GET, and the
        worker takes its next order a commit sooner (bench.ab: +5.7% polls/s)."""
        self._store_due(decision.next_poll_at)
        self.d.store.reschedule_nowait(claim, decision.next_poll_at, **_progress(decision))

    def _store_due(self, at: float) -> None:
        """An order goes back to the store due at `at`."""
        self._due_written = min(self._due_written, at)

    def _store_clear_until(self) -> float:
        """No unleased order in the store is due before this, as far as this process knows
        (a write made while the claim ran may have come too late for it)."""
        return min(self._store_clear_at, self._due_written)

    async def _give_back(self, claim: Claim, unsaved: Reschedule | None) -> None:
        """Unlease the order, due when it was, with the progress no one wrote yet."""
        self._store_due(claim.due_at)
        if unsaved is None:
            await self.d.store.release(claim)
            return
        await self.d.store.reschedule(claim, claim.due_at, **_progress(unsaved))

    async def _finish(
        self, claim: Claim, answer: Answer, fin: Finish, now: float, unsaved: Reschedule | None
    ) -> None:
        d = self.d
        if not await d.store.holds(claim):
            log.warning("order.lease_lost", order_id=claim.order_id)
            return
        if fin.state == "final":
            assert answer.body is not None
            try:
                await asyncio.to_thread(write_payload, d.output_dir, claim.order_id, answer.body)
            except OSError as e:
                await self._write_failed(claim, now, e, unsaved)
                return
            data = answer.data
        else:
            try:
                if await asyncio.to_thread(remove_payload, d.output_dir, claim.order_id):
                    log.warning("payload.removed", order_id=claim.order_id, state=fin.state)
            except OSError as e:
                await self._write_failed(claim, now, e, unsaved, "cannot remove payload")
                return
            last = answer.body or (unsaved and unsaved.last_body)
            last = last or await d.store.last_body(claim.order_id)
            data = terminal_data(claim.order_id, fin.final_status, last)
        event = make_event(claim.order_id, fin.final_status, data, now)
        if await d.store.finish(claim, fin.state, fin.final_status, event, d.sinks):  # type: ignore[arg-type]
            d.metrics.finals.labels(fin.final_status).inc()
            log.info(
                "order.final",
                order_id=claim.order_id,
                status=fin.final_status,
                event_id=event.event_id,
                age_s=round(now - claim.added_at, 3),
            )
            d.on_final()
            if fin.state == "final":
                assert answer.body is not None
                await self._restore_payload(claim.order_id, answer.body)
            else:  # a stale writer's rename may have come between our removal and commit
                await self._remove_stray_payload(claim.order_id)
        elif fin.state == "final":
            # Refused after writing: our lease ran out while we wrote, and the holder may have
            # committed before our rename landed on its file.
            committed = await d.store.get_event(claim.order_id)
            body = committed_payload(committed)
            if body is not None:
                await self._restore_payload(claim.order_id, body)
            elif committed is not None:  # it ended without a payload (expired, not_found)
                await self._remove_stray_payload(claim.order_id)

    async def _remove_stray_payload(self, order_id: str) -> None:
        """The order ended without a payload: no file may hold payout links for it."""
        try:
            if await asyncio.to_thread(remove_payload, self.d.output_dir, order_id):
                log.warning("payload.removed", order_id=order_id, state="ended without payload")
        except OSError as e:
            log.error(
                "payload.write_failed",
                order_id=order_id,
                error=self._disk_error("cannot remove payload", e),
            )

    async def _restore_payload(self, order_id: str, body: bytes) -> None:
        """Leave the committed payload in the file, whoever renamed last (see payloads)."""
        try:
            if await asyncio.to_thread(restore_payload, self.d.output_dir, order_id, body):
                log.warning("payload.restored", order_id=order_id)
        except OSError as e:
            log.error(
                "payload.write_failed",
                order_id=order_id,
                error=self._disk_error("cannot restore payload", e),
            )

    def _disk_error(self, what: str, e: OSError) -> str:
        """Names the directory (a deleted or unmounted one is the usual cause), not the file."""
        return f"{what} in {self.d.output_dir}: {e.strerror or type(e).__name__}"

    async def _write_failed(
        self,
        claim: Claim,
        now: float,
        e: OSError,
        unsaved: Reschedule | None,
        what: str = "cannot write payload",
    ) -> None:
        reason = self._disk_error(what, e)
        log.error("payload.write_failed", order_id=claim.order_id, error=reason)
        streak = claim.error_streak + 1
        at = now + min(self.d.polling.max_interval_s, 2.0 ** min(streak, 64))
        self._store_due(at)
        await self.d.store.reschedule(
            claim,
            at,
            polls=claim.polls,
            error_streak=streak,
            first_404_at=claim.first_404_at,
            last_error=reason,
            last_body=unsaved.last_body if unsaved is not None else None,
        )

    async def run_until_idle(self) -> None:
        """Poll every order that is due now, one after another, until none is due (tests, wait)."""
        while claims := await self.d.store.claim_due(
            self.d.wall(), self.d.max_concurrency, self.d.owner, self._lease_s
        ):
            await asyncio.gather(*(self.poll_one(c) for c in claims))
            await self.d.store.flush()
