"""The store interface every backend implements (SQLite now, PostgreSQL for replicas).

Times are wall-clock epoch seconds (they must survive restarts). Work is handed out as leases:
a claimed order or delivery is invisible to other claimers until `lease_until`, and every write
that acts on a claim names its fencing token, so a worker whose lease was taken over writes
nothing (the call returns False).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

from orderwatch.core.rate_limit import RateLimiter

OrderState = Literal["pending", "final", "expired", "not_found"]
# What a push did, per push: a repeat of one already kept; an unknown order now tracked; a
# pending order made due at EXPEDITED_AT, or leased (its holder polls it); an order already
# ended; an unknown order left alone (track_unknown off).
PushOutcome = Literal["duplicate", "added", "expedited", "leased", "ended", "untracked"]
DeliveryState = Literal["pending", "delivered", "dead", "disabled"]

# What a stop may spend on the store for the next owner's sake (claims given back, leases
# released, queued writes): a courtesy, since leases run out by themselves, so a store
# that hangs costs the stop this much, not its own timeouts one call after another.
GOODBYE_S = 2.0
# The due time of an order a push or a sweep says may be final: before every order that is
# merely due, so the next claim takes it first.
EXPEDITED_AT = 0.0
# How long a push's id is kept to spot its retries: past Svix's whole retry schedule (about
# 28 hours from the first attempt), with room for a late resend.
PUSH_RETENTION_S = 3 * 86400.0


class Claim(NamedTuple):
    """A pending order leased to one worker for one poll. A NamedTuple, like the other values
    made once per poll (`Answer`, `Reschedule`): immutable, and cheaper to build than a frozen
    dataclass."""

    order_id: str
    fence: int
    due_at: float  # when it was due; `release` without a time puts it back there
    added_at: float
    polls: int  # successful PROCESSING answers so far: drives the normal cadence
    error_streak: int  # failures in a row: drives the error backoff, a separate budget
    first_404_at: float | None
    lease_until: float  # after this another worker may hold it: act on it only before


def finish_params(claim: Claim, state: str, final_status: str, now: float) -> tuple[Any, ...]:
    """The parameters of both stores' finishing UPDATE, in its order: the new state, the
    progress the claim carries, whether an expedite made it due (then whoever expedited it
    found it, else a poll did), then the fenced row."""
    return (
        state,
        final_status,
        now,
        claim.polls,
        claim.error_streak,
        claim.first_404_at,
        claim.due_at == EXPEDITED_AT,
        claim.order_id,
        claim.fence,
    )


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A final event: its stable id, and the exact bytes every sink receives."""

    event_id: str
    order_id: str
    event_type: str  # order.completed | order.failed | order.expired | order.not_found
    body: bytes  # {"type", "timestamp", "data"}, serialized once, sent verbatim forever
    created_at: float


@dataclass(frozen=True, slots=True)
class OrderRow:
    """What `status` shows of one order."""

    order_id: str
    state: OrderState
    added_at: float
    polls: int
    error_streak: int
    next_poll_at: float | None
    last_error: str | None
    final_status: str | None  # COMPLETED / FAILED / EXPIRED / NOT_FOUND
    finished_at: float | None
    found_by: str | None = None  # what found it final: poll, sweep or push (None: not yet)


@dataclass(frozen=True, slots=True)
class PushSeen:
    """Pushes kept for one order (within PUSH_RETENTION_S): how many, the first and last."""

    count: int
    first_at: float
    last_at: float


@dataclass(frozen=True, slots=True)
class DeliveryClaim:
    """One (event, sink) delivery leased to one sender for one attempt."""

    event: EventRecord
    sink: str
    attempts: int  # attempts made before this one
    fence: int


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """What `status` shows of one delivery."""

    event_id: str
    order_id: str
    sink: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float | None
    last_outcome: str | None


@dataclass(frozen=True, slots=True)
class DeadDelivery:
    """A delivery that spent its retry schedule (or an old `disabled` one): what the status
    page lists, with the replay that sends it again."""

    event_id: str
    order_id: str
    sink: str
    attempts: int
    last_outcome: str | None
    dead_at: float  # when its last attempt was recorded


class Store(Protocol):
    """Durable queue of orders and outbox of deliveries. Every method is safe to call from
    the event loop (backends do blocking I/O off the loop)."""

    # -- orders --------------------------------------------------------------------------
    async def add_orders(self, order_ids: Iterable[str], now: float, first_poll_at: float) -> int:
        """Insert new pending orders (existing ones, in any state, are left alone).
        Returns how many were new. Durable when it returns."""
        ...

    async def claim_due(self, now: float, limit: int, owner: str, lease_s: float) -> list[Claim]:
        """Lease up to `limit` pending orders whose next poll is due, earliest due first."""
        ...

    async def next_due_at(self) -> float | None:
        """Earliest next_poll_at among pending, unleased orders (None when there are none)."""
        ...

    async def reschedule(
        self,
        claim: Claim,
        next_poll_at: float,
        *,
        polls: int,
        error_streak: int,
        first_404_at: float | None,
        last_error: str | None,
        last_body: bytes | None,
    ) -> bool:
        """Keep the order pending with its new counters; drop the lease. False if fenced out.
        `last_body` None keeps the previous stored body."""
        ...

    def reschedule_nowait(
        self,
        claim: Claim,
        next_poll_at: float,
        *,
        polls: int,
        error_streak: int,
        first_404_at: float | None,
        last_error: str | None,
        last_body: bytes | None,
    ) -> None:
        """`reschedule`, queued: returns at once and the write follows (`flush` waits for it).
        For a poll that left the order PROCESSING, where waiting buys nothing: a write that is
        lost (crash, store error: logged) leaves the order leased, so it is polled again when
        the lease ends or the daemon restarts. Never for a final."""
        ...

    async def flush(self) -> None:
        """Wait until every write queued by `reschedule_nowait` so far is done (or failed)."""
        ...

    async def release(self, claim: Claim, next_poll_at: float | None = None) -> bool:
        """Drop the lease without counting a poll (429, auth pause, shutdown)."""
        ...

    async def finish(
        self,
        claim: Claim,
        state: OrderState,
        final_status: str,
        event: EventRecord,
        sinks: Sequence[str],
    ) -> bool:
        """In one transaction: end the order (its polls, error streak and first 404 become
        the claim's, which count polls under this lease not yet written), store its event,
        queue one delivery per sink. False (and nothing written) if fenced out or the order
        is no longer pending."""
        ...

    async def expedite(
        self, order_ids: Sequence[str], by: str = "push"
    ) -> tuple[list[str], list[str]]:
        """Pending orders that may be final now (a push, a sweep of the list endpoint): the
        unleased ones become due at EXPEDITED_AT, ahead of everything merely due. Returns
        (expedited, leased): a leased one is someone's claim already, and its holder polls
        it. Unknown and ended orders are in neither list. Durable when it returns. `by`
        (push, sweep) is what `found_by` says if the GET this brings finds the order final."""
        ...

    async def defer(
        self, order_ids: Sequence[str], due_before: float, until: float, give_up_after_s: float
    ) -> int:
        """Pending, unleased orders among these, due before `due_before` (and not expedited),
        become due at `until` instead: a sweep saw them PROCESSING. An order whose give-up
        time (added_at + give_up_after_s) comes before `until` is left alone, so it still
        expires on time. How many moved. Not durable: a lost deferral costs one GET."""
        ...

    async def accept_pushes(
        self, pushes: Sequence[tuple[str, str]], now: float, track_unknown: bool
    ) -> list[PushOutcome]:
        """Record pushes, (push id, order id) each, in ONE durable transaction: a push id seen
        before (or earlier in `pushes`) is a duplicate and changes nothing; otherwise the order
        is expedited like `expedite` (a lease that ran out does not count), or added due at
        EXPEDITED_AT when unknown and `track_unknown`. Ids older than PUSH_RETENTION_S are
        pruned. One outcome per push, in order. Durable when it returns."""
        ...

    async def pushes_for(self, order_ids: Sequence[str]) -> dict[str, PushSeen]:
        """The pushes kept for these orders (orders without any are left out)."""
        ...

    async def holds(self, claim: Claim) -> bool:
        """True while this claim's fencing token is still current (checked before the payload
        file is written, so a worker that lost its lease writes nothing)."""
        ...

    async def last_body(self, order_id: str) -> bytes | None:
        """The last API body stored for an order (for expired/not_found events)."""
        ...

    async def counts(self) -> dict[str, int]:
        """Orders by state, every state present (zero where none)."""
        ...

    async def oldest_pending_added_at(self) -> float | None:
        """added_at of the oldest pending order (for the stuck-order alert)."""
        ...

    async def get_orders(self, order_ids: Sequence[str]) -> list[OrderRow]:
        """Rows for the IDs that exist, in the order asked."""
        ...

    async def oldest_pending(self, limit: int) -> list[OrderRow]:
        """Up to `limit` pending orders, the oldest added first (then by id)."""
        ...

    async def recent_finals(self, limit: int) -> list[OrderRow]:
        """Up to `limit` ended orders (every final state), the latest finished first."""
        ...

    # -- deliveries (outbox) ---------------------------------------------------------------
    async def claim_deliveries(
        self, now: float, limit: int, owner: str, lease_s: float, sinks: Sequence[str]
    ) -> list[DeliveryClaim]:
        """Lease due pending deliveries for the given sinks, earliest due first."""
        ...

    async def next_delivery_due_at(self, sinks: Sequence[str]) -> float | None:
        """Earliest due pending delivery among `sinks`."""
        ...

    async def record_delivery(
        self,
        claim: DeliveryClaim,
        now: float,
        state: DeliveryState,
        outcome: str,
        next_attempt_at: float | None,
    ) -> bool:
        """Record one attempt's result; drop the lease. False if fenced out."""
        ...

    async def replay(self, order_ids: Sequence[str], sinks: Sequence[str], now: float) -> int:
        """Queue every final event of these orders again to every sink, due now, same event id.
        Returns how many deliveries were queued."""
        ...

    async def get_deliveries(self, order_ids: Sequence[str]) -> list[DeliveryRow]:
        """Delivery rows for these orders."""
        ...

    async def delivery_counts(self) -> dict[str, int]:
        """Deliveries by state."""
        ...

    async def pull_forward(self, beyond: float, to: float) -> int:
        """Pending orders due (or leased) after `beyond` become due at `to`: the wall clock
        stepped back, and nothing the daemon schedules lies that far out. How many moved."""
        ...

    async def shift_retries(self, step: float, now: float) -> int:
        """Deliveries waiting for a retry (pending, not leased) due after `now` become due
        `step` seconds sooner, never before `now`: the wall clock stepped back by `step`. How
        many moved."""
        ...

    async def pending_deliveries_by_sink(self) -> dict[str, int]:
        """Pending deliveries by sink id (a scan: for start-up, not for every pass)."""
        ...

    async def dead_deliveries(self, limit: int) -> list[DeadDelivery]:
        """Up to `limit` dead (or disabled) deliveries, the latest to die first."""
        ...

    async def get_event(self, order_id: str) -> EventRecord | None:
        """The final event of an order, if it has one."""
        ...

    # -- small facts ---------------------------------------------------------------------
    async def get_meta(self, key: str) -> str | None:
        """A small durable fact (e.g. a watchlist's signature when it was last read)."""
        ...

    async def set_meta(self, key: str, value: str) -> None: ...

    async def update_meta(self, key: str, update: Callable[[str | None], str]) -> str:
        """Replace a small fact by `update(old)` (None: no such fact) with no other writer in
        between, even in another process or replica: for facts that several merge into (the
        learned cadence). `update` must be quick and pure; it may run on the store's thread.
        Returns the new value."""

    async def hold_lease(self, name: str, owner: str, now: float, lease_s: float) -> bool:
        """Take or extend the named lease for `owner` until now + lease_s, when no one else
        holds it past `now`: True while `owner` holds it (one sweep at a time among
        replicas). Kept in meta."""
        ...

    # -- capabilities --------------------------------------------------------------------
    def shared_limiter(self, rate: float) -> RateLimiter | None:
        """The rate limiter every process on this store shares (replicas on PostgreSQL), or
        None where the daemon is the store's only user and its own limiter suffices."""
        ...

    # -- lifecycle -----------------------------------------------------------------------
    async def release_owner(self, owner: str, now: float) -> None:
        """Drop every lease this owner holds, making those items due by `now` (clean shutdown)."""
        ...

    async def ping(self) -> None:
        """Raise StoreError if the store cannot be used right now (readiness)."""
        ...

    async def close(self) -> None: ...
