"""What happens to a verified push: committed, then acted on in this process.

Pushes that arrive together share one durable transaction (`Store.accept_pushes`: dedupe by
Svix message id, add or expedite the order); each is answered only after its commit, so a
crash after the 2xx loses nothing and one before it leaves Svix to retry. Then, in this
process, the scheduler is told (`bring_forward`: claim the expedited orders ahead of the
backlog, move held or queued claims of pushed orders to the front).

An order leased when its push came may be in the middle of a GET sent before it completed,
which would answer PROCESSING and put it back at its normal cadence. So a leased one is
followed up: tried again every FOLLOW_UP_S, for as long as a lease can last, until the store
expedites it, a claim of it held here is brought forward, or it is no longer pending. That
costs at most one GET more per push, and covers a lease held by another replica too."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

import structlog

from orderwatch.core.errors import StoreError
from orderwatch.store.base import PushOutcome, Store

log = structlog.get_logger("orderwatch.push")
MAX_BATCH = 500  # pushes per transaction
FOLLOW_UP_S = 0.5

# (orders expedited in the store, ids of leased orders) -> the ids found held or queued here
BringForward = Callable[[int, Iterable[str]], set[str]]


class PushIntake:
    def __init__(
        self,
        store: Store,
        bring_forward: BringForward,
        *,
        wall: Callable[[], float],
        lease_s: float,
        track_unknown: bool = True,
    ) -> None:
        self._store = store
        self._bring_forward = bring_forward
        self._wall = wall
        self._follow_for_s = 2 * lease_s
        self.track_unknown = track_unknown
        self._waiting: list[tuple[str, str, asyncio.Future[PushOutcome]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._leased: dict[str, float] = {}  # order id -> until when to follow it up
        self._follower: asyncio.Task[None] | None = None

    async def submit(self, push_id: str, order_id: str) -> PushOutcome:
        """Commit one push (with whatever else is waiting); its outcome once durable.
        Raises StoreError when the store failed (the push is then not recorded)."""
        done: asyncio.Future[PushOutcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((push_id, order_id, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="push-commit")
        return await done

    async def _write(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                outcomes = await self._store.accept_pushes(
                    [(p, o) for p, o, _ in batch], self._wall(), self.track_unknown
                )
            except BaseException as e:  # a cancel too: no push may wait forever
                error = e if isinstance(e, StoreError) else StoreError(f"push commit: {e!r}")
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(error)
                if not isinstance(e, Exception):
                    raise
                continue
            self._after_commit([o for _, o, _ in batch], outcomes)
            for (_, _, done), outcome in zip(batch, outcomes, strict=True):
                if not done.done():
                    done.set_result(outcome)

    def _after_commit(self, order_ids: list[str], outcomes: list[PushOutcome]) -> None:
        in_store = sum(1 for o in outcomes if o in ("added", "expedited"))
        leased = {i for i, o in zip(order_ids, outcomes, strict=True) if o == "leased"}
        if not in_store and not leased:
            return
        found = self._bring_forward(in_store, leased)
        until = self._wall() + self._follow_for_s
        for order_id in leased - found:
            self._leased[order_id] = until
        if self._leased and (self._follower is None or self._follower.done()):
            self._follower = asyncio.create_task(self._follow_up(), name="push-follow-up")

    async def _follow_up(self) -> None:
        while self._leased:
            await asyncio.sleep(FOLLOW_UP_S)
            now = self._wall()
            for order_id, until in list(self._leased.items()):
                if until < now:
                    del self._leased[order_id]  # the lease ran out: it is due anyway
            ids = sorted(self._leased)
            if not ids:
                return
            try:
                expedited, leased = await self._store.expedite(ids)
            except StoreError as e:
                log.warning("push.follow_up_failed", error=str(e))
                continue
            found = self._bring_forward(len(expedited), leased)
            for order_id in set(ids) - (set(leased) - found):
                self._leased.pop(order_id, None)

    async def close(self) -> None:
        for task in (self._writer, self._follower):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
