"""Ending an order: its payload file written (or removed), then the store's one transaction
that ends it, stores its event and queues its deliveries. The file comes first, so an order
is never final without its file; a stale writer's rename is put right after the commit."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from orderwatch.config.models import PollingSettings
from orderwatch.delivery.events import committed_payload, make_event, terminal_data
from orderwatch.delivery.payload_files import remove_payload, restore_payload, write_payload
from orderwatch.polling.answers import Answer, Kind
from orderwatch.polling.metrics import PollMetrics
from orderwatch.polling.policy import Finish, Reschedule, decide
from orderwatch.store.base import Claim, Store

log = structlog.get_logger("orderwatch.poller")


CRASHED = Answer(Kind.INVALID, detail="crashed applying the answer")  # see `crashed`


class Finisher:
    def __init__(
        self,
        store: Store,
        output_dir: Path,
        sinks: Sequence[str],
        metrics: PollMetrics,
        polling: Callable[[], PollingSettings],
        on_final: Callable[[], None],
        store_due: Callable[[float], None],
        write: Callable[[Path, str, bytes], Path] = write_payload,
        on_completed: Callable[[Claim, float], None] | None = None,
    ) -> None:
        self.store = store
        self.output_dir = output_dir
        self.sinks = sinks
        self.metrics = metrics
        self._polling = polling
        self._on_final = on_final
        self._store_due = store_due
        self._write = write
        self._on_completed = on_completed  # the learned cadence hears of each completion

    async def crashed(
        self, claim: Claim, unsaved: Reschedule | None, now: float, rng: random.Random
    ) -> None:
        """A poll that crashed counts as a bad answer of its order: the error back-off, then
        expired at give_up_after. Left to its lease, an answer that crashes came back at every
        lease's end, forever. Should this fail too, the lease is the last resort."""
        try:
            if not await self.store.holds(claim):
                return  # it ended before the crash, or another worker holds it now
            decision = decide(CRASHED, claim, now, self._polling(), rng)
            if isinstance(decision, Reschedule):
                last = unsaved.last_body if unsaved is not None else None
                self._store_due(decision.next_poll_at)
                await self.store.reschedule(
                    claim,
                    decision.next_poll_at,
                    polls=decision.polls,
                    error_streak=decision.error_streak,
                    first_404_at=decision.first_404_at,
                    last_error=decision.last_error,
                    last_body=last,
                )
            elif isinstance(decision, Finish):
                await self.finish(claim, CRASHED, decision, now, unsaved)
        except Exception as e:
            log.error("poll.crash_not_counted", order_id=claim.order_id, error=type(e).__name__)

    async def finish(
        self, claim: Claim, answer: Answer, fin: Finish, now: float, unsaved: Reschedule | None
    ) -> None:
        if not await self.store.holds(claim):
            log.warning("order.lease_lost", order_id=claim.order_id)
            return
        if fin.state == "final":
            assert answer.body is not None
            try:
                await asyncio.to_thread(self._write, self.output_dir, claim.order_id, answer.body)
            except OSError as e:
                await self._write_failed(claim, now, e, unsaved)
                return
            data = answer.data
        else:
            try:
                if await asyncio.to_thread(remove_payload, self.output_dir, claim.order_id):
                    log.warning("payload.removed", order_id=claim.order_id, state=fin.state)
            except OSError as e:
                await self._write_failed(claim, now, e, unsaved, "cannot remove payload")
                return
            last = answer.body or (unsaved and unsaved.last_body)
            last = last or await self.store.last_body(claim.order_id)
            data = terminal_data(claim.order_id, fin.final_status, last)
        event = make_event(claim.order_id, fin.final_status, data, now)
        if await self.store.finish(claim, fin.state, fin.final_status, event, self.sinks):  # type: ignore[arg-type]
            self.metrics.finals.labels(fin.final_status).inc()
            log.info(
                "order.final",
                order_id=claim.order_id,
                status=fin.final_status,
                event_id=event.event_id,
                age_s=round(now - claim.added_at, 3),
            )
            self._on_final()
            if fin.state == "final":
                if self._on_completed is not None:
                    self._on_completed(claim, now)
                assert answer.body is not None
                await self._restore_payload(claim.order_id, answer.body)
            else:  # a stale writer's rename may have come between our removal and commit
                await self._remove_stray_payload(claim.order_id)
        elif fin.state == "final":
            # Refused after writing: our lease ran out while we wrote, and the holder may have
            # committed before our rename landed on its file.
            committed = await self.store.get_event(claim.order_id)
            body = committed_payload(committed)
            if body is not None:
                await self._restore_payload(claim.order_id, body)
            elif committed is not None:  # it ended without a payload (expired, not_found)
                await self._remove_stray_payload(claim.order_id)

    async def _remove_stray_payload(self, order_id: str) -> None:
        """The order ended without a payload: no file may hold payout links for it."""
        try:
            if await asyncio.to_thread(remove_payload, self.output_dir, order_id):
                log.warning("payload.removed", order_id=order_id, state="ended without payload")
        except OSError as e:
            log.error(
                "payload.write_failed",
                order_id=order_id,
                error=self._disk_error("cannot remove payload", e),
            )

    async def _restore_payload(self, order_id: str, body: bytes) -> None:
        """Leave the committed payload in the file, whoever renamed last (see payload_files)."""
        try:
            if await asyncio.to_thread(restore_payload, self.output_dir, order_id, body):
                log.warning("payload.restored", order_id=order_id)
        except OSError as e:
            log.error(
                "payload.write_failed",
                order_id=order_id,
                error=self._disk_error("cannot restore payload", e),
            )

    def _disk_error(self, what: str, e: OSError) -> str:
        """Names the directory (a deleted or unmounted one is the usual cause), not the file."""
        return f"{what} in {self.output_dir}: {e.strerror or type(e).__name__}"

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
        at = now + min(self._polling().max_interval_s, 2.0 ** min(streak, 64))
        self._store_due(at)
        await self.store.reschedule(
            claim,
            at,
            polls=claim.polls,
            error_streak=streak,
            first_404_at=claim.first_404_at,
            last_error=reason,
            last_body=unsaved.last_body if unsaved is not None else None,
        )
