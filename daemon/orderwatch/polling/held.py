"""Held claims: orders still PROCESSING whose next poll falls within HOLD_S of their claim
(and well inside its lease). They wait here, leased, for their next poll, carrying what the
polls since the claim decided, not yet written: fast-cycling orders then cost the store a
claim and a write per HOLD_S, not per poll. A crash loses at most HOLD_S of their progress
(the poll count, the last body), and they are polled again at once at restart.

Earliest due first still holds across held and stored orders: a held claim goes ahead of the
store only when it is due before anything the store could hold (`store_clear_until`)."""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Collection, Container
from typing import Any

import structlog

from orderwatch.core.errors import StoreError
from orderwatch.polling.client import SWEEP_S
from orderwatch.polling.policy import Reschedule
from orderwatch.polling.prefetch import Prefetch
from orderwatch.store.base import EXPEDITED_AT, GOODBYE_S, Claim, Store

log = structlog.get_logger("orderwatch.poller")
HOLD_S = 10.0  # how long after its claim a polled order may stay in memory, unwritten


def _progress(r: Reschedule) -> dict[str, Any]:
    """A decision as the store's reschedule takes it, all but the time."""
    return {
        "polls": r.polls,
        "error_streak": r.error_streak,
        "first_404_at": r.first_404_at,
        "last_error": r.last_error,
        "last_body": r.last_body,
    }


class HeldClaims:
    """Held claims, and the writes that give claims back to the store."""

    def __init__(
        self, store: Store, lease_s: float, request_timeout_s: float, hold_s: float = HOLD_S
    ) -> None:
        self._store = store
        self._hold_s = hold_s
        self._heap: list[tuple[float, int, Claim, Reschedule]] = []
        self._seq = 0
        self._lease_s = lease_s
        self._send_margin_s = request_timeout_s + SWEEP_S + 1.0
        self.enabled = False  # only while the scheduler runs: `run_until_idle` writes every poll
        # The store had no unleased order due by this when its last claim began (-inf: not
        # known), and nothing written back since is due before `_due_written`.
        self._store_clear_at = -math.inf
        self._due_written = math.inf

    def __bool__(self) -> bool:
        return bool(self._heap)

    def __len__(self) -> int:
        return len(self._heap)

    def soonest(self) -> float:
        return self._heap[0][0] if self._heap else math.inf

    def hold(self, claim: Claim, decision: Reschedule) -> bool:
        """Keep the claim for its next poll when that falls within HOLD_S of the claim (and
        so well inside the lease); False: write it back instead."""
        if not self.enabled:
            return False
        claimed_at = claim.lease_until - self._lease_s
        hold_until = min(claimed_at + self._hold_s, claim.lease_until - self._send_margin_s)
        at = decision.next_poll_at
        if at > hold_until:
            return False
        again = Claim(  # not `_replace`, which is several times slower
            claim.order_id,
            claim.fence,
            at,
            claim.added_at,
            decision.polls,
            decision.error_streak,
            decision.first_404_at,
            claim.lease_until,
        )
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, again, decision))
        return True

    def move_due(
        self, ready: Prefetch[tuple[Claim, Reschedule | None]], due_by: float, room: int
    ) -> int:
        """Queue up to `room` held claims due by `due_by`, earliest first."""
        moved = 0
        room = min(room, ready.room())
        while moved < room and self._heap and self._heap[0][0] <= due_by:
            _, _, c, unsaved = heapq.heappop(self._heap)
            ready.put((c, unsaved))
            moved += 1
        return moved

    def take(self, order_ids: Container[str]) -> list[tuple[Claim, Reschedule]]:
        """The held claims of these orders, taken out (a push brings them forward)."""
        taken = [(c, unsaved) for _, _, c, unsaved in self._heap if c.order_id in order_ids]
        if taken:
            self._heap = [e for e in self._heap if e[2].order_id not in order_ids]
            heapq.heapify(self._heap)
        return taken

    def expedite(self, order_ids: Collection[str]) -> int:
        """Held claims of these orders become due at once, ahead of everything merely due
        (a sweep or a push says they may be final; their GET then counts as expedited)."""
        hit = 0
        for i, (_, seq, c, unsaved) in enumerate(self._heap):
            if c.order_id in order_ids and c.due_at != EXPEDITED_AT:
                self._heap[i] = (EXPEDITED_AT, seq, c._replace(due_at=EXPEDITED_AT), unsaved)
                hit += 1
        if hit:
            heapq.heapify(self._heap)
        return hit

    def take_all(self) -> list[tuple[Claim, Reschedule]]:
        held, self._heap = self._heap, []
        return [(c, unsaved) for _, _, c, unsaved in held]

    # -- back to the store --------------------------------------------------------------------
    def write(self, claim: Claim, decision: Reschedule) -> None:
        """Not waited for: still PROCESSING, so a lost write costs one repeated GET, and the
        worker takes its next order a commit sooner."""
        self.store_due(decision.next_poll_at)
        self._store.reschedule_nowait(claim, decision.next_poll_at, **_progress(decision))

    async def give_back(self, claim: Claim, unsaved: Reschedule | None) -> None:
        """Unlease the order, due when it was, with the progress no one wrote yet."""
        self.store_due(claim.due_at)
        if unsaved is None:
            await self._store.release(claim)
            return
        await self._store.reschedule(claim, claim.due_at, **_progress(unsaved))

    async def hand_back(self, claims: list[tuple[Claim, Reschedule | None]]) -> bool:
        """At a stop: give unstarted and held claims back and write the queued reschedules,
        within GOODBYE_S (a lost reschedule costs one more GET; one claim at a time, each
        waiting out the store's timeout, took minutes with PostgreSQL down). False if the
        store failed (the leases then run out by themselves)."""
        try:
            async with asyncio.timeout(GOODBYE_S):
                for c, unsaved in claims:  # held ones go as one batch of queued writes
                    if unsaved is not None:
                        self.write(c, unsaved)  # its due_at is unsaved.next_poll_at
                plain = (c for c, unsaved in claims if unsaved is None)
                await asyncio.gather(*(self._store.release(c) for c in plain))
                await self._store.flush()
        except (TimeoutError, StoreError) as e:
            log.warning(
                "store.hand_back_failed",
                claims=len(claims),
                error=str(e) or f"no answer in {GOODBYE_S:g}s",
                hint="the leases run out by themselves (polling.lease)",
            )
            return False
        return True

    def leave_unsent(self, claim: Claim, unsaved: Reschedule | None) -> None:
        """Too late in its lease to send: whoever holds the order next polls it. What held
        polls learned is still written (fenced: if the lease is gone, it changes nothing)."""
        if unsaved is not None:
            self.write(claim, unsaved._replace(next_poll_at=claim.due_at))

    # -- what the store is known to be clear up to -------------------------------------------
    def store_due(self, at: float) -> None:
        """An order goes back to the store due at `at`."""
        self._due_written = min(self._due_written, at)

    def store_unknown(self) -> None:
        """Orders were added, or a claim filled its room: the store may hold anything."""
        self._store_clear_at = -math.inf

    def claim_started(self) -> None:
        self._due_written = math.inf

    def store_clear(self, now: float) -> None:
        """The claim that just began found nothing else due by `now`."""
        self._store_clear_at = now

    def store_clear_until(self) -> float:
        """No unleased order in the store is due before this, as far as this process knows
        (a write made while the claim ran may have come too late for it)."""
        return min(self._store_clear_at, self._due_written)
