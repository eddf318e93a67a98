"""The sweep: when more orders are pending than one GET each can look at soon, read the list
endpoint (`GET /order`, 500 orders a page) instead, and act on what it shows of tracked
orders: one seen COMPLETED or FAILED is expedited (its next claim comes first, and that one
ordinary GET brings the full body the file and the event keep); one seen PROCESSING is not
polled alone meanwhile (`Store.defer`). Orders the pages did not show are polled one by one
as ever. The list only ever hastens a GET: the GET decides, so an order the list calls final
and the GET PROCESSING stays PROCESSING (and is not expedited again for `distrust_s`).

When (the rule): more orders pending than per-order polling can GET in `horizon_s` at the
configured rate (pending > rate x horizon_s); once sweeping, until fewer are pending than
`keep_fraction` of that, so the last orders of a burst are not left to per-order polling
just as their deferrals run out. How often: a sweep starts at most every `min_period_s`
after the last one started, and no oftener than keeps list pages within `share` of the rate.
How far: from the first page on, until a page ends the list, the pages have shown every
pending order, a page shows no pending order and only orders created before the oldest
pending one was added (less `created_slack_s`), or the budget is spent: what `share` of the
rate sends in `max_period_s` (60 pages at 10/s), or the pending orders' own pages plus
`extra_pages` where that is more. (The list holds ended and untracked orders too: the
pending ones are spread over more pages than their number needs.)
Nothing here depends on the order the list comes in: a different order costs coverage
(more orders polled one by one), never correctness.

Every page passes the gate and the limiter as a GET does; a 429 pauses everyone. A page that
fails (a 400 pagination_error, 5xx, malformed, transport) ends that sweep (logged once per run
of failures; the sweeps back off). A 401/403 on the list says this key may not list:
sweeping stops (logged once) until the key changes, or an hour has passed, and the gate is
not told: GETs decide about the key (a refused one pauses them, and every page, as ever).
Among replicas one sweeps at a time (`Store.hold_lease`)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import structlog

from orderwatch.core.aio import wait_any
from orderwatch.core.errors import StoreError
from orderwatch.polling.answers import Answer, Kind, Listed, Page
from orderwatch.polling.gate import hold_limiter, tell_gate
from orderwatch.store.base import EXPEDITED_AT

if TYPE_CHECKING:
    from orderwatch.polling.scheduler import PollerDeps

log = structlog.get_logger("orderwatch.sweep")

LIMIT = 500  # the most the list endpoint gives in one page
LEASE = "sweep"
_CROCKFORD = {c: i for i, c in enumerate("0123456789ABCDEFGHJKMNPQRSTVWXYZ")}


@dataclass(frozen=True)
class SweepTuning:
    horizon_s: float = 10.0  # sweep when per-order polling needs longer than this for a round
    keep_fraction: float = 0.1  # ...and go on until fewer than this share of that are pending
    min_period_s: float = 2.0  # sweeps start at most this often
    share: float = 0.2  # of the rate, at most, for list pages
    extra_pages: int = 2  # a sweep's budget beyond ceil(pending / LIMIT)...
    max_period_s: float = 30.0  # ...or what `share` of the rate sends in this, if more
    defer_periods: float = 3.0  # an order seen PROCESSING waits this many periods for a GET
    min_defer_s: float = 10.0  # ...and at least this long
    created_slack_s: float = 300.0  # an order may be created this long before it is added
    idle_check_s: float = 1.0  # how often the rule is looked at while there is no sweeping
    max_backoff_s: float = 60.0  # sweeps that fail wait up to this long for the next
    refused_retry_s: float = 3600.0  # a list refused (401/403) is tried again after this
    distrust_s: float = 60.0  # the list said final, a GET said otherwise: not again so soon


@dataclass(frozen=True)
class SweepResult:
    outcome: str  # covered | end | budget | failed | refused | paused
    pages: int
    seen: int  # pending tracked orders the pages showed
    expedited: int
    deferred: int


def created_at(order: Listed) -> float | None:
    """When a listed order was created: its created_at, or the time in its ULID."""
    if order.created_at is not None:
        try:
            return datetime.fromisoformat(order.created_at).timestamp()
        except ValueError:
            return None
    ulid = order.order_id.removeprefix("O-")
    if len(ulid) != 26 or ulid[0] > "7" or not all(c in _CROCKFORD for c in ulid):
        return None
    ms = 0
    for ch in ulid[:10]:
        ms = ms * 32 + _CROCKFORD[ch]
    return ms / 1000


class Sweep:
    """One per poller. `run` loops until stopped; `sweep_once` is one sweep (tests)."""

    def __init__(
        self,
        deps: PollerDeps,
        on_found: Callable[[set[str]], None],
        tuning: SweepTuning | None = None,
    ) -> None:
        self.d = deps
        self.t = tuning or SweepTuning()
        self._on_found = on_found
        self._period = self.t.min_period_s
        self._sweeping = False  # the rule held at the last look (its lower bound applies)
        self._started = 0.0  # monotonic: when the last sweep began
        self._cycle = 0.0  # between the last two sweeps' starts (a sweep's pages take time)
        self._next_at = 0.0  # monotonic: when the next sweep may start
        self._failures = 0
        self._refused_at: float | None = None  # monotonic
        self._refused_key = 0
        self._told_refused = False
        self._expedited: dict[str, float] = {}  # order -> when this sweep expedited it (wall)

    # -- when ------------------------------------------------------------------------------
    def wanted(self, pending: int) -> bool:
        """The rule: more pending than per-order polling can GET in horizon_s (and, once
        sweeping, more than keep_fraction of that)."""
        bound = self.d.rate * self.t.horizon_s
        self._sweeping = pending > (bound * self.t.keep_fraction if self._sweeping else bound)
        return self._sweeping

    def _refused(self, now: float) -> bool:
        if self._refused_at is None:
            return False
        if self.d.client.key_changes != self._refused_key:
            self._refused_at = None  # a new key: it may list
            return False
        return now - self._refused_at < self.t.refused_retry_s

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                delay = await self._step()
            except StoreError as e:
                log.warning("sweep.store_unavailable", error=str(e))
                delay = self.t.max_backoff_s
            except Exception:  # a bug costs sweeping for a while, not the polling
                log.exception("sweep.crashed")
                delay = self.t.max_backoff_s
            await wait_any(stop, timeout=delay)

    async def _step(self) -> float:
        """Sweep if it is time; how long until it is worth looking again."""
        now = time.monotonic()
        if self.d.polling.sweep == "off" or self._refused(now) or self.d.gate.closed():
            return self.t.idle_check_s
        if now < self._next_at:
            return self._next_at - now
        pending = (await self.d.store.counts())["pending"]
        if not self.wanted(pending):
            return self.t.idle_check_s
        lease_s = self._defer_s()
        if not await self.d.store.hold_lease(LEASE, self.d.owner, self.d.wall(), lease_s):
            return self._period  # another replica sweeps
        result = await self.sweep_once(pending)
        wait = self._after(result)
        ok = result.outcome not in ("failed", "paused")
        self._next_at = (self._started if ok else time.monotonic()) + wait  # start to start
        return max(0.0, self._next_at - time.monotonic())

    def _defer_s(self) -> float:
        """How long an order seen PROCESSING waits for its next GET: a few sweeps' time (as
        the last ones went, pages and all), so the next sweeps see it first."""
        return max(self.t.min_defer_s, self.t.defer_periods * max(self._period, self._cycle))

    def _after(self, r: SweepResult) -> float:
        """The wait before the next sweep; also the period its deferrals are sized by."""
        if r.outcome in ("failed", "paused"):
            self._started = 0.0  # a back-off is no sweep cycle: deferrals stay short
            backoff = self._period * 2.0 ** min(self._failures, 16)
            return min(self.t.max_backoff_s, backoff)
        self._period = max(self.t.min_period_s, r.pages / (self.d.rate * self.t.share))
        return self._period

    # -- one sweep -------------------------------------------------------------------------
    async def sweep_once(self, pending: int) -> SweepResult:
        """Page through the list from its start for the `pending` tracked orders."""
        oldest = await self.d.store.oldest_pending_added_at()
        cutoff = -math.inf if oldest is None else oldest - self.t.created_slack_s
        budget = max(
            math.ceil(pending / LIMIT) + self.t.extra_pages,
            math.floor(self.d.rate * self.t.share * self.t.max_period_s),
        )
        after: str | None = None
        pages = seen = expedited = deferred = 0
        outcome = "budget"
        self._forget(self.d.wall())
        started = time.monotonic()
        if self._started:
            self._cycle = started - self._started
        self._started = started
        while pages < budget:
            answer = await self._ask(after)
            pages += 1
            if answer is None or answer.kind is not Kind.LISTED:
                return self._failed(answer, pages, seen, expedited, deferred)
            page: Page = answer.data
            shown, e, f = await self._read(page)
            seen, expedited, deferred = seen + shown, expedited + e, deferred + f
            if page.size < LIMIT or not page.after or page.after == after:
                outcome = "end"
                break
            if seen >= pending or (not shown and _all_before(page, cutoff)):
                outcome = "covered"
                break
            after = page.after
        if self._failures:
            log.info("sweep.recovered", after_failures=self._failures)
        self._failures = 0
        self._told_refused = False
        self.d.metrics.sweeps.labels(outcome).inc()
        return SweepResult(outcome, pages, seen, expedited, deferred)

    async def _read(self, page: Page) -> tuple[int, int, int]:
        """Act on the tracked, pending orders a page shows: (shown, expedited, deferred)."""
        d, now = self.d, self.d.wall()
        rows = await d.store.get_orders([o.order_id for o in page.orders])
        pending = {r.order_id: r for r in rows if r.state == "pending"}
        if not pending:
            return 0, 0, 0
        finals, processing = [], []
        for o in page.orders:
            row = pending.get(o.order_id)
            if row is None:
                continue
            if o.status == "PROCESSING":
                processing.append(o.order_id)
            elif row.next_poll_at == EXPEDITED_AT:
                continue  # its GET is on the way
            elif now - self._expedited.get(o.order_id, -math.inf) >= self.t.distrust_s:
                finals.append(o.order_id)
        expedited: list[str] = []
        if finals:
            expedited, leased = await d.store.expedite(finals, by="sweep")
            self._expedited.update(dict.fromkeys(expedited, now))
            if expedited or leased:
                self._on_found(set(leased))  # held here for a later poll: due now
        moved = 0
        if processing:
            defer_s = self._defer_s()
            give_up = d.polling.give_up_after_s
            moved = await d.store.defer(processing, now + defer_s / 2, now + defer_s, give_up)
        return len(pending), len(expedited), moved

    def _forget(self, now: float) -> None:
        """Orders expedited long enough ago that the list may be asked about them again."""
        if len(self._expedited) > 1000:
            cut = now - self.t.distrust_s
            self._expedited = {k: t for k, t in self._expedited.items() if t > cut}

    async def _ask(self, after: str | None) -> Answer | None:
        """One page, through the gate and the limiter as every GET; None: a pause came."""
        d = self.d
        if d.gate.closed():
            return None
        if not d.limiter.try_acquire():
            t0 = time.monotonic()
            await d.limiter.acquire()
            d.metrics.limiter_wait.inc(time.monotonic() - t0)
            if d.gate.closed():  # a 429 or a refused key came while this one waited
                return None
        t1 = time.monotonic()
        answer = await d.client.list_orders(LIMIT, after=after)
        d.metrics.polls.listed(answer.kind, time.monotonic() - t1)
        if answer.kind in (Kind.AUTH, Kind.REFUSED):
            return answer  # the list's own answer: GETs decide about the key (see _failed)
        pause = tell_gate(d.gate, d.metrics, answer, d.wall())
        if pause is not None:
            if pause:
                await hold_limiter(d.limiter, pause)
            if d.pauses is not None:
                await d.pauses.remember()
        return answer

    def _failed(
        self, answer: Answer | None, pages: int, seen: int, expedited: int, deferred: int
    ) -> SweepResult:
        """This sweep ends here; per-order polling carries on."""
        if answer is None or answer.kind is Kind.RATE_LIMITED:
            outcome = "paused"  # the gate says so in the log already
        elif answer.kind is Kind.AUTH:
            outcome = "refused"
            self._refused_at, self._refused_key = time.monotonic(), self.d.client.key_changes
            if not self._told_refused:
                self._told_refused = True
                log.warning(
                    "sweep.disabled",
                    http_status=answer.http_status,
                    hint="the Runa API refuses this key the order list; orders are polled one"
                    " by one (tried again in an hour, or at once with a new key)",
                )
        else:
            outcome = "failed"
            self._failures += 1
            if self._failures == 1:
                log.warning(
                    "sweep.failed",
                    reason=answer.detail,
                    hint="orders are polled one by one until a sweep works again",
                )
        self.d.metrics.sweeps.labels(outcome).inc()
        return SweepResult(outcome, pages, seen, expedited, deferred)


def _all_before(page: Page, cutoff: float) -> bool:
    """Every order on the page is dated, and created before `cutoff`."""
    times = [created_at(o) for o in page.orders]
    return bool(times) and all(t is not None and t < cutoff for t in times)
