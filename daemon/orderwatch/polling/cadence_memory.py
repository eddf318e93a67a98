"""The learned cadence outlives the process and is shared by replicas: its sketch of
completion ages is kept in the store's small facts (key `cadence`), read at start, and
merged into every REFRESH_EVERY completions (or REFRESH_S, whichever comes first; never more
often than MIN_REFRESH_S), and at stop.

Each process sends only the completions it saw since its last merge; the store's
`update_meta` fades the stored sketch by that many completions and adds them, with no
other writer in between, so replicas on one PostgreSQL store learn one cadence together
and none overwrites what another added. Each then plans from the merged sketch. Folding
and planning run in a thread: they take milliseconds to a few tenths of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable

import structlog

from orderwatch.config.models import PollingSettings
from orderwatch.core.aio import wait_any
from orderwatch.core.errors import StoreError
from orderwatch.polling.cadence import Cadence, make_schedule
from orderwatch.polling.cadence_sketch import Sketch
from orderwatch.store.base import GOODBYE_S, Store

log = structlog.get_logger("orderwatch.cadence")
KEY = "cadence"
REFRESH_S = 60.0  # completions wait at most this long to be merged; other replicas' too
MIN_REFRESH_S = 5.0  # however fast orders complete, one merge and plan per this at most


def _stored(raw: str | None) -> Sketch:
    try:
        return Sketch.from_json(raw)
    except ValueError:
        return Sketch()  # an unreadable sketch (another version's) is learned again


class CadenceMemory:
    def __init__(
        self,
        store: Store,
        cadence: Cadence,
        polling: Callable[[], PollingSettings],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._wall = wall
        self._cadence = cadence
        self._polling = polling
        self._unsaved = Sketch()  # completions folded but not yet merged into the store
        self._stored: str | None = None  # the stored sketch as last read
        self._planned_for: PollingSettings | None = None  # a reload makes another
        self._news = asyncio.Event()
        cadence.on_news(self._news.set)

    async def recall(self) -> None:
        """At start: plan from the stored sketch (a store error: start from nothing)."""
        try:
            raw = await self._store.get_meta(KEY)
        except StoreError as e:
            log.warning("cadence.not_read", error=str(e))
            return
        await self._adopt(raw, since=-math.inf)  # orders already under way too
        s = self._cadence.schedule
        log.info(
            "cadence.recalled",
            completions=self._cadence.sketch.seen,
            learned=s is not None,
            polls=len(s.ages) if s else None,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Merge and plan when there is news or REFRESH_S has passed; at stop, merge once
        more (within GOODBYE_S)."""
        while not stop.is_set():
            await wait_any(stop, self._news, timeout=REFRESH_S)
            if stop.is_set():
                break
            self._news.clear()
            await self.refresh()
            await wait_any(stop, timeout=MIN_REFRESH_S)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(GOODBYE_S):
                await self.refresh(plan=False)

    async def refresh(self, plan: bool = True) -> None:
        """Fold the new completions in, merge them into the store, plan from the result."""
        seen = self._cadence.take()
        if seen:
            self._unsaved = await asyncio.to_thread(self._unsaved.add, seen)
        raw: str | None
        try:
            if self._unsaved.seen:
                unsaved = self._unsaved
                raw = await self._store.update_meta(
                    KEY, lambda old: _stored(old).merged(unsaved).to_json()
                )
                self._unsaved = Sketch()
            else:
                raw = await self._store.get_meta(KEY)  # what other replicas learned
        except StoreError as e:
            log.warning("cadence.not_saved", error=str(e), completions=self._unsaved.seen)
            return  # kept for the next refresh
        if plan and (raw != self._stored or self._polling() is not self._planned_for):
            await self._adopt(raw, since=self._wall())

    async def _adopt(self, raw: str | None, since: float) -> None:
        self._stored = raw
        sketch = _stored(raw)
        polling = self._planned_for = self._polling()
        schedule = await asyncio.to_thread(make_schedule, sketch, polling)
        self._cadence.adopt(sketch, schedule, since)
        if schedule is not None:
            p = schedule.plan
            log.info(
                "cadence.planned",
                completions=sketch.seen,
                polls=len(p.ages),
                first_s=round(p.ages[0], 3),
                gets=round(p.gets, 2),
                budget=round(p.budget, 2),
                p50_s=round(p.p50_s, 3),
                p99_s=round(p.p99_s, 3),
                fixed_p50_s=round(p.fixed_p50_s, 3),
                fixed_p99_s=round(p.fixed_p99_s, 3),
            )
