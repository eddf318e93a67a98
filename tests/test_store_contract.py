"""The store contract: what every backend must do, run against each backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orderwatch.events import make_event
from orderwatch.store.base import Store
from orderwatch.store.sqlite import SqliteStore

from conftest import BACKENDS

T0 = 1_700_000_000.0


async def test_add_is_idempotent_and_counts_new(store: Store) -> None:
    """Adding an order twice tracks it once; the return value counts only new ones."""
    assert await store.add_orders(["A", "B"], T0, T0 + 2) == 2
    assert await store.add_orders(["B", "C"], T0, T0 + 2) == 1
    assert (await store.counts())["pending"] == 3


async def test_claim_due_earliest_first_and_leases(store: Store) -> None:
    """Due orders come earliest-due first; a leased order is not handed out twice."""
    await store.add_orders(["late"], T0, T0 + 5)
    await store.add_orders(["early"], T0, T0 + 1)
    await store.add_orders(["future"], T0, T0 + 100)
    claims = await store.claim_due(T0 + 10, 10, "w1", 30)
    assert [c.order_id for c in claims] == ["early", "late"]
    assert await store.claim_due(T0 + 10, 10, "w2", 30) == []
    # the lease expires: another owner may take it, and the first owner is fenced out
    again = await store.claim_due(T0 + 41, 10, "w2", 30)
    assert {c.order_id for c in again} == {"early", "late"}
    stale = claims[0]
    assert not await store.reschedule(
        stale, T0 + 50, polls=1, error_streak=0, first_404_at=None, last_error=None, last_body=None
    )


async def test_reschedule_and_release(store: Store) -> None:
    """Reschedule stores counters and the next due time; release puts the order back as due."""
    await store.add_orders(["A"], T0, T0)
    (c,) = await store.claim_due(T0, 1, "w", 30)
    assert await store.reschedule(
        c, T0 + 7, polls=1, error_streak=2, first_404_at=T0, last_error="http 500", last_body=b"{}"
    )
    assert await store.next_due_at() == T0 + 7
    (row,) = await store.get_orders(["A"])
    assert (row.polls, row.error_streak, row.last_error) == (1, 2, "http 500")
    assert await store.last_body("A") == b"{}"
    (c2,) = await store.claim_due(T0 + 7, 1, "w", 30)
    assert (c2.polls, c2.error_streak, c2.first_404_at) == (1, 2, T0)
    assert await store.release(c2)
    assert await store.next_due_at() == T0 + 7


async def test_finish_writes_event_and_outbox_once(store: Store) -> None:
    """finish ends the order, stores the event and one delivery per sink, exactly once."""
    await store.add_orders(["A"], T0, T0)
    (c,) = await store.claim_due(T0, 1, "w", 30)
    ev = make_event("A", "COMPLETED", {"id": "A", "status": "COMPLETED"}, T0 + 1)
    assert await store.finish(c, "final", "COMPLETED", ev, ["s1", "s2"])
    assert not await store.finish(c, "final", "COMPLETED", ev, ["s1", "s2"])
    assert (await store.counts())["final"] == 1
    assert await store.get_event("A") == ev
    rows = await store.get_deliveries(["A"])
    assert [(r.sink, r.state, r.event_id) for r in rows] == [
        ("s1", "pending", ev.event_id),
        ("s2", "pending", ev.event_id),
    ]
    assert await store.add_orders(["A"], T0 + 2, T0 + 2) == 0
    assert (await store.counts())["pending"] == 0


async def test_delivery_lifecycle_and_replay(store: Store) -> None:
    """Deliveries are claimed per sink, recorded with fencing, and replay re-queues the same id."""
    await store.add_orders(["A"], T0, T0)
    (c,) = await store.claim_due(T0, 1, "w", 30)
    ev = make_event("A", "FAILED", {"id": "A", "status": "FAILED"}, T0)
    await store.finish(c, "final", "FAILED", ev, ["s1"])
    assert await store.next_delivery_due_at(["s1"]) == T0
    (d,) = await store.claim_deliveries(T0, 10, "w", 30, ["s1"])
    assert d.event == ev and d.attempts == 0
    assert await store.claim_deliveries(T0, 10, "w", 30, ["s1"]) == []
    assert await store.record_delivery(d, T0 + 1, "dead", "http 500", None)
    assert (await store.delivery_counts())["dead"] == 1
    assert await store.replay(["A"], ["s1"], T0 + 2) == 1
    (d2,) = await store.claim_deliveries(T0 + 2, 10, "w", 30, ["s1"])
    assert d2.event.event_id == ev.event_id and d2.attempts == 0
    assert not await store.record_delivery(d, T0 + 3, "delivered", "http 200", None)
    assert await store.record_delivery(d2, T0 + 3, "delivered", "http 200", None)
    (row,) = await store.get_deliveries(["A"])
    assert (row.state, row.attempts, row.last_outcome) == ("delivered", 1, "http 200")


async def test_release_owner_makes_leased_work_due(store: Store) -> None:
    """A clean shutdown gives leased orders back, due at once, to whoever runs next."""
    await store.add_orders(["A", "B"], T0, T0)
    await store.claim_due(T0, 2, "w", 300)
    assert await store.claim_due(T0 + 1, 2, "x", 300) == []
    await store.release_owner("w", T0 + 1)
    assert len(await store.claim_due(T0 + 1, 2, "x", 300)) == 2


async def test_oldest_pending_and_ping(store: Store) -> None:
    """The oldest pending order's age is known; ping succeeds on a healthy store."""
    assert await store.oldest_pending_added_at() is None
    await store.add_orders(["A"], T0, T0)
    await store.add_orders(["B"], T0 + 5, T0 + 5)
    assert await store.oldest_pending_added_at() == T0
    await store.ping()


async def test_counts_follow_every_transition(store: Store) -> None:
    """Counts by state stay exact through adds, duplicates and each kind of ending."""
    await store.add_orders(["A", "B", "C", "D"], T0, T0)
    await store.add_orders(["A", "E"], T0, T0)
    claims = {c.order_id: c for c in await store.claim_due(T0, 10, "w", 30)}
    for oid, state, status in [
        ("A", "final", "COMPLETED"),
        ("B", "expired", "EXPIRED"),
        ("C", "not_found", "NOT_FOUND"),
    ]:
        ev = make_event(oid, status, {"id": oid}, T0)
        assert await store.finish(claims[oid], state, status, ev, [])  # type: ignore[arg-type]
    assert not await store.finish(
        claims["A"], "final", "COMPLETED", make_event("A", "COMPLETED", {}, T0), []
    )
    assert await store.counts() == {"pending": 2, "final": 1, "expired": 1, "not_found": 1}


@pytest.fixture(params=BACKENDS)
async def two_stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Store, Store]]:
    """Two store instances on the same state, as two processes (or replicas) would have."""
    if request.param == "postgres":
        from orderwatch.store.postgres import PostgresStore

        dsn = request.getfixturevalue("pg_dsn")
        a: Store = await PostgresStore.open(dsn)
        b: Store = await PostgresStore.open(dsn)
    else:
        a = await SqliteStore.open(tmp_path / "state", daemon=True, now=0.0)
        b = await SqliteStore.open(tmp_path / "state")
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_concurrent_claimers_get_disjoint_orders(two_stores: tuple[Store, Store]) -> None:
    """Two claimers racing over the same due orders never get the same one."""
    a, b = two_stores
    ids = [f"O-{i:04d}" for i in range(400)]
    await a.add_orders(ids, T0, T0)

    async def drain(s: Store, owner: str) -> list[str]:
        got: list[str] = []
        while claims := await s.claim_due(T0 + 1, 7, owner, 300):
            got += [c.order_id for c in claims]
        return got

    got_a, got_b = await asyncio.gather(drain(a, "a"), drain(b, "b"))
    assert not set(got_a) & set(got_b)
    assert sorted(got_a + got_b) == ids


async def test_deliveries_claimed_once_across_instances(two_stores: tuple[Store, Store]) -> None:
    """A delivery is leased to one sender at a time across instances."""
    a, b = two_stores
    await a.add_orders(["A"], T0, T0)
    (c,) = await a.claim_due(T0, 1, "a", 30)
    await a.finish(c, "final", "COMPLETED", make_event("A", "COMPLETED", {}, T0), ["s"])
    first = await a.claim_deliveries(T0, 10, "a", 30, ["s"])
    assert len(first) == 1 and await b.claim_deliveries(T0, 10, "b", 30, ["s"]) == []
