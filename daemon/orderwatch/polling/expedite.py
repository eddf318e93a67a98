"""Orders a push says may be final, as the scheduler sees them: ahead of every order that is
merely due, even when a backlog saturates the rate limit. They still wait for the limiter and
the gate like every GET: a burst of pushes reorders the queue, it never adds to the rate.

Three places such an order may be: in the store, made due at EXPEDITED_AT by the push's own
transaction (the next pass claims them at once, beside the batching rule, and queues them at
the front); held here between polls (`held`); or claimed and waiting in the prefetch queue.
The last two go to the front of the queue at once. Among themselves pushed orders keep their
order of arrival."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from orderwatch.polling.held import HeldClaims
from orderwatch.polling.policy import Reschedule
from orderwatch.polling.prefetch import Prefetch
from orderwatch.store.base import EXPEDITED_AT, Claim, Store

Queued = tuple[Claim, Reschedule | None]


class Expedited:
    def __init__(
        self, held: HeldClaims, ready: Prefetch[Queued], wake: Callable[[], None], cap: int
    ) -> None:
        self._held = held
        self._ready = ready
        self._wake = wake
        self._cap = cap  # claimed at once at most: beyond the queue's size by as many
        self.wanted = 0  # orders expedited in the store since the last claim of them

    def bring_forward(self, in_store: int, order_ids: Iterable[str] = ()) -> set[str]:
        """`in_store` orders were made due at EXPEDITED_AT in the store: claim them at the
        next pass. Claims of `order_ids` held or queued here go to the front of the queue now.
        Returns the ids found here."""
        ids = set(order_ids)
        found: list[Queued] = []
        if ids:
            found = [*self._ready.take_if(lambda q: q[0].order_id in ids), *self._held.take(ids)]
            for claim, unsaved in found:
                if unsaved is not None:  # what it writes if given back: expedited still
                    unsaved = unsaved._replace(next_poll_at=EXPEDITED_AT)
                self._to_front(claim._replace(due_at=EXPEDITED_AT), unsaved)
        self.wanted = min(self.wanted + in_store, self._cap)
        if self.wanted or found:
            self._wake()
        return {claim.order_id for claim, _ in found}

    async def claim(self, store: Store, now: float, owner: str, lease_s: float) -> int:
        """Claim the expedited orders (earliest due first: they come first) to the front, as
        long as the queue holds less than twice its size: claims wait in memory a bounded
        time, well inside their lease. The rest come first in the ordinary claims."""
        wanted, self.wanted = min(self.wanted, 2 * self._cap - len(self._ready)), 0
        if wanted <= 0:
            return 0
        claims = await store.claim_due(now, wanted, owner, lease_s)
        self.queue(claims)
        return len(claims)

    def queue(self, claims: Iterable[Claim]) -> None:
        """Claims from the store into the queue: expedited ones at the front."""
        for c in claims:
            if c.due_at <= EXPEDITED_AT:
                self._to_front(c, None)
            else:
                self._ready.put((c, None))

    def _to_front(self, claim: Claim, unsaved: Reschedule | None) -> None:
        """Behind the pushed orders queued already, ahead of the rest."""
        ready, i = self._ready, 0
        while i < len(ready) and ready[i][0].due_at <= EXPEDITED_AT:
            i += 1
        ready.put_at(i, (claim, unsaved))
