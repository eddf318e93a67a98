"""The store contract: what every backend must do, run against each backend."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from orderwatch.core.errors import StoreError
from orderwatch.delivery.events import make_event
from orderwatch.store.base import PUSH_RETENTION_S, Claim, PushSeen, Store
from orderwatch.store.sqlite import QUEUED_WRITE_DELAY_S, SqliteStore

from harness import until

T0 = 1_700_000_000.0


async def test_add_is_idempotent_and_counts_new(store: Store) -> None:
    """Adding an order twice tracks it once; the return value counts only new ones."""
    assert await store.add_orders(["A", "B"], T0, T0 + 2) == 2
    assert await store.add_orders(["B", "C"], T0, T0 + 2) == 1
    assert await store.add_orders(["D", "D", "C"], T0, T0 + 2) == 1  # twice in one call
    assert (await store.counts())["pending"] == 4


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


async def test_expedite_puts_orders_ahead_of_everything_due(store: Store) -> None:
    """A pushed or swept order is claimed before every order that is merely due; a leased
    one is reported, not taken from its holder; unknown and ended ones are ignored."""
    await store.add_orders(["due1"], T0, T0 + 1)
    await store.add_orders(["due2"], T0, T0 + 2)
    await store.add_orders(["later"], T0, T0 + 100)
    (held,) = await store.claim_due(T0 + 5, 1, "w1", 30)
    assert held.order_id == "due1"
    expedited, leased = await store.expedite(["later", "due1", "unknown"])
    assert (sorted(expedited), leased) == (["later"], ["due1"])
    claims = await store.claim_due(T0 + 5, 1, "w2", 30)
    assert [c.order_id for c in claims] == ["later"]  # ahead of due2, due since T0 + 2
    assert [c.order_id for c in await store.claim_due(T0 + 5, 10, "w2", 30)] == ["due2"]
    expedited, leased = await store.expedite([])
    assert (expedited, leased) == ([], [])


async def test_accept_pushes_dedupes_tracks_and_expedites_in_one_call(store: Store) -> None:
    """A push expedites its pending order ahead of everything due, adds an unknown one, leaves
    leased and ended ones alone; a push id seen before (or twice in one call) changes
    nothing; a lease that ran out does not hold a push back."""
    for order_id in ("done", "held", "stale"):
        await store.add_orders([order_id], T0, T0)
        (c,) = await store.claim_due(T0 + 100, 1, "w", 5 if order_id == "stale" else 30)
        if order_id == "done":
            ev = make_event("done", "COMPLETED", {"id": "done"}, T0 + 100)
            assert await store.finish(c, "final", "COMPLETED", ev, [])
    await store.add_orders(["later"], T0, T0 + 1000)
    await store.add_orders(["first"], T0, T0 + 1)
    now = T0 + 110  # "held" is leased until T0 + 130, "stale" was until T0 + 105
    pushes = [
        ("msg_1", "later"),
        ("msg_2", "held"),
        ("msg_3", "done"),
        ("msg_4", "new"),
        ("msg_1", "later"),
        ("msg_5", "stale"),
    ]
    got = await store.accept_pushes(pushes, now, track_unknown=True)
    assert got == ["expedited", "leased", "ended", "added", "duplicate", "expedited"]
    assert await store.accept_pushes([("msg_4", "new")], now + 1, True) == ["duplicate"]
    assert await store.accept_pushes([("msg_6", "other")], now, False) == ["untracked"]
    assert (await store.counts())["pending"] == 5  # held, stale, later, first, new
    claims = await store.claim_due(now, 10, "w2", 30)
    # The pushed ones first (their order among themselves is the store's), then "first".
    assert {c.order_id for c in claims[:3]} == {"later", "new", "stale"}
    assert [c.order_id for c in claims[3:]] == ["first"]
    seen = await store.pushes_for(["later", "new", "other", "first"])
    assert seen["later"] == PushSeen(1, now, now) and seen["new"].count == 1
    assert "first" not in seen and seen["other"].count == 1


async def test_accept_pushes_prunes_ids_past_their_retention(store: Store) -> None:
    """A push id older than PUSH_RETENTION_S is forgotten (the table stays bounded): the same
    id again counts as new."""
    await store.add_orders(["A"], T0, T0 + 100)
    assert await store.accept_pushes([("msg_a", "A")], T0, True) == ["expedited"]
    later = T0 + PUSH_RETENTION_S + 1
    assert await store.accept_pushes([("msg_b", "A")], later, True) == ["expedited"]
    assert await store.pushes_for(["A"]) == {"A": PushSeen(1, later, later)}
    assert await store.accept_pushes([("msg_a", "A")], later, True) == ["expedited"]
    assert await store.accept_pushes([], later, True) == []


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


async def test_reschedule_nowait_lands_by_flush_and_is_fenced(store: Store) -> None:
    """A queued reschedule is written by `flush`; one from a holder that lost its lease since
    changes nothing."""
    await store.add_orders(["A"], T0, T0)
    await store.add_orders(["B"], T0, T0 + 1)
    (a,) = await store.claim_due(T0, 1, "w1", 100)
    (stale,) = await store.claim_due(T0 + 1, 1, "w1", 10)
    (b,) = await store.claim_due(T0 + 12, 5, "w2", 10)  # B's lease ran out: w2 holds it now
    assert b.order_id == stale.order_id == "B"
    kw: dict[str, Any] = {"error_streak": 0, "first_404_at": None, "last_error": None}
    store.reschedule_nowait(a, T0 + 7, polls=1, last_body=b"{}", **kw)
    store.reschedule_nowait(stale, T0 + 99, polls=5, last_body=b"stale", **kw)
    await store.flush()
    rows = {r.order_id: r for r in await store.get_orders(["A", "B"])}
    assert (rows["A"].polls, rows["A"].next_poll_at) == (1, T0 + 7)
    assert (rows["B"].polls, rows["B"].next_poll_at) == (0, T0 + 22)  # still w2's lease
    assert await store.last_body("A") == b"{}" and await store.last_body("B") is None
    assert [c.order_id for c in await store.claim_due(T0 + 7, 5, "w1", 10)] == ["A"]
    await store.flush()  # nothing queued: returns at once


BODIES = [
    b'{"id": "A", "status": "PROCESSING", "note": "caf\xc3\xa9 \xf0\x9f\x98\x80 \\u0000 \\"q\\""}\n',
    b'{\t"id":\r\n"B"}',
    '{"id": "C", "note": "not UTF-8"}'.encode("utf-16"),  # JSON a server may send, too
    b"<html>\x00 NUL</html>",  # a 404 page's body is kept as well
    b'<p>\x01\x1f\x7f \\ " \xe2\x80\xa8</p>',
    b"",
]


async def test_queued_bodies_and_times_come_back_exactly(store: Store) -> None:
    """What a queued reschedule stores comes back byte for byte and to the last bit of each
    time, whatever the body's text (the SQLite store sends them as one JSON document)."""
    ids = ["A", "B", "C", "D", "E", "F"]
    awkward = [T0 + 0.1234567891, T0 + 1 / 3, T0 + 2**-20, T0 + 123.4567890123, T0 + 1e-6, T0]
    await store.add_orders(ids, T0, T0)
    claims = await store.claim_due(T0, 6, "w", 30)
    for c, body, at in zip(sorted(claims, key=lambda c: c.order_id), BODIES, awkward, strict=True):
        store.reschedule_nowait(
            c, at, polls=3, error_streak=1, first_404_at=at - 1, last_error="e", last_body=body
        )
    await store.flush()
    for oid, body in zip(ids, BODIES, strict=True):
        assert await store.last_body(oid) == body
    again = {c.order_id: c for c in await store.claim_due(T0 + 200, 6, "w", 30)}
    for oid, at in zip(ids, awkward, strict=True):
        c = again[oid]
        assert (c.due_at, c.first_404_at, c.polls, c.error_streak) == (at, at - 1, 3, 1)


async def test_close_writes_what_was_queued(tmp_path: Path) -> None:
    """Closing the store (as a clean shutdown does) commits queued writes first."""
    store = await SqliteStore.open(tmp_path, daemon=True, now=T0)
    await store.add_orders(["A"], T0, T0)
    (c,) = await store.claim_due(T0, 1, "w", 30)
    store.reschedule_nowait(
        c, T0 + 3, polls=1, error_streak=0, first_404_at=None, last_error=None, last_body=None
    )
    await store.close()
    store = await SqliteStore.open(tmp_path, daemon=True, now=T0)
    try:
        (row,) = await store.get_orders(["A"])
        assert (row.polls, row.next_poll_at) == (1, T0 + 3)
    finally:
        await store.close()


async def test_sqlite_claims_and_queued_writes_are_a_few_statements(
    sqlite_store: SqliteStore,
) -> None:
    """A claim of 100 with 100 queued writes runs a handful of statements, not one per row:
    the sqlite3 module lets go of the GIL at every row, and the event loop took it each time
    (bench.switches: the store thread switched 0.9 times per poll before, 0.4 after)."""
    now = 1_000.0
    await sqlite_store.add_orders([f"O-{i:03d}" for i in range(200)], now, now)
    first = await sqlite_store.claim_due(now, 100, "w", 30)
    steps: list[str] = []
    await sqlite_store.trace(steps.append)
    for c in first:
        sqlite_store.reschedule_nowait(
            c,
            now + 60,
            polls=1,
            error_streak=0,
            first_404_at=None,
            last_error=None,
            last_body=b'{"status": "PROCESSING"}',
        )
    second = await sqlite_store.claim_due(now, 100, "w", 30)
    await sqlite_store.trace(None)
    assert len(second) == 100 and not {c.order_id for c in first} & {c.order_id for c in second}
    # the writes in their own transaction or in the claim's: 7 statements at most
    assert len(steps) <= 7, [s[:40] for s in steps]
    (row,) = await sqlite_store.get_orders([first[0].order_id])
    assert (row.polls, row.next_poll_at) == (1, now + 60)


async def test_sqlite_writes_in_company_gather_for_each_batch(sqlite_store: SqliteStore) -> None:
    """A steady stream of queued writes commits about once per QUEUED_WRITE_DELAY_S, not once
    per write: every batch waits for company, not only the first."""
    now = 1_000.0
    await sqlite_store.add_orders([f"O-{i:03d}" for i in range(300)], now, now)
    claims = await sqlite_store.claim_due(now, 300, "w", 30)
    steps: list[str] = []
    await sqlite_store.trace(steps.append)
    loop = asyncio.get_running_loop()
    start = loop.time()
    i = 0
    while loop.time() - start < 0.3:  # writes as fast as the loop goes, for 0.3 s
        sqlite_store.reschedule_nowait(
            claims[i % len(claims)],
            now + 60,
            polls=1,
            error_streak=0,
            first_404_at=None,
            last_error=None,
            last_body=None,
        )
        i += 1
        await asyncio.sleep(0)
    spent = loop.time() - start
    await sqlite_store.flush()
    await sqlite_store.trace(None)
    commits = steps.count("COMMIT")
    assert commits <= spent / QUEUED_WRITE_DELAY_S + 3, (commits, spent)
    rows = await sqlite_store.get_orders([c.order_id for c in claims])
    assert {r.polls for r in rows} == {1}


@asynccontextmanager
async def leased_a(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, Claim, sqlite3.Connection]]:
    """SQLite with order A leased for 30 s, a 50 ms busy timeout, and a second connection (as
    another process) that a test can make hold the write lock."""
    store = await SqliteStore.open(tmp_path, daemon=True, now=T0)
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        await store.add_orders(["A"], T0, T0)
        (c,) = await store.claim_due(T0, 1, "w", 30)
        store.db.execute("PRAGMA busy_timeout=50")  # the store thread is idle here
        yield store, c, other
    finally:
        other.close()
        await store.close()


def queue_first_poll(store: SqliteStore, c: Claim) -> None:
    store.reschedule_nowait(
        c, T0 + 1, polls=1, error_streak=0, first_404_at=None, last_error=None, last_body=None
    )


async def test_a_failed_queued_write_is_logged_and_the_order_polled_again(
    tmp_path: Path,
) -> None:
    """Another process holds the write lock past the busy timeout: the queued reschedule fails,
    is logged (not raised), and the order stays leased, so it is polled again at lease end."""
    async with leased_a(tmp_path) as (store, c, other):
        other.execute("BEGIN IMMEDIATE")
        with capture_logs() as logs:
            queue_first_poll(store, c)
            await store.flush()
        other.execute("ROLLBACK")
        (failed,) = [e for e in logs if e["event"] == "store.write_failed"]
        assert failed["writes"] == 1 and "locked" in failed["error"]
        assert await store.claim_due(T0 + 29, 1, "w", 30) == []
        (again,) = await store.claim_due(T0 + 30, 1, "w", 30)
        assert (again.order_id, again.polls) == ("A", 0)


async def test_a_durable_write_that_cannot_begin_leaves_commits_cheap(tmp_path: Path) -> None:
    """A durable transaction switches to synchronous=FULL; when its BEGIN fails (another
    process holds the write lock), the connection is back on NORMAL, not left fsyncing every
    later commit."""
    async with leased_a(tmp_path) as (store, _, other):
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError):
            await store.add_orders(["B"], T0, T0)
        other.execute("ROLLBACK")
        assert store.db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL


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


async def test_finish_writes_the_progress_its_claim_carries(store: Store) -> None:
    """A held claim's polls were never written: finish stores the counts the claim carries."""
    await store.add_orders(["A"], T0, T0)
    (c,) = await store.claim_due(T0, 1, "w", 30)
    held = c._replace(polls=7, error_streak=2, first_404_at=T0 + 0.5)
    ev = make_event("A", "COMPLETED", {"id": "A", "status": "COMPLETED"}, T0 + 1)
    assert await store.finish(held, "final", "COMPLETED", ev, [])
    (row,) = await store.get_orders(["A"])
    assert (row.state, row.polls, row.error_streak) == ("final", 7, 2)


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


async def test_updates_of_one_fact_from_two_instances_lose_nothing(
    two_stores: tuple[Store, Store],
) -> None:
    """Two instances (processes, replicas) merging into one fact at once: every update counts."""
    a, b = two_stores

    async def bump_many(s: Store) -> None:
        for _ in range(25):
            await s.update_meta("n", lambda old: str(int(old or "0") + 1))

    await asyncio.gather(bump_many(a), bump_many(b), bump_many(a), bump_many(b))
    assert await a.get_meta("n") == "100"


async def test_deliveries_claimed_once_across_instances(two_stores: tuple[Store, Store]) -> None:
    """A delivery is leased to one sender at a time across instances."""
    a, b = two_stores
    await a.add_orders(["A"], T0, T0)
    (c,) = await a.claim_due(T0, 1, "a", 30)
    await a.finish(c, "final", "COMPLETED", make_event("A", "COMPLETED", {}, T0), ["s"])
    first = await a.claim_deliveries(T0, 10, "a", 30, ["s"])
    assert len(first) == 1 and await b.claim_deliveries(T0, 10, "b", 30, ["s"]) == []


async def test_fenced_out_writes_change_nothing(store: Store) -> None:
    """After a takeover the old holder's release, finish and holds all fail, and its finish
    leaves no event and no delivery behind."""
    await store.add_orders(["A"], T0, T0)
    (old,) = await store.claim_due(T0, 1, "w1", 10)
    (new,) = await store.claim_due(T0 + 11, 1, "w2", 10)
    assert new.fence > old.fence
    assert await store.holds(new) and not await store.holds(old)
    assert not await store.release(old, T0)
    ev = make_event("A", "COMPLETED", {"id": "A"}, T0 + 12)
    assert not await store.finish(old, "final", "COMPLETED", ev, ["s"])
    assert await store.get_event("A") is None and await store.get_deliveries(["A"]) == []
    assert await store.finish(new, "final", "COMPLETED", ev, ["s"])
    assert not await store.holds(new)  # a final order is held by nobody


async def test_release_with_a_time_and_reschedule_keeps_the_body(store: Store) -> None:
    """release(at) makes the order due then; reschedule without a body keeps the stored one."""
    await store.add_orders(["A"], T0, T0)
    (c,) = await store.claim_due(T0, 1, "w", 30)
    assert await store.reschedule(
        c, T0 + 1, polls=1, error_streak=0, first_404_at=None, last_error=None, last_body=b"1"
    )
    (c,) = await store.claim_due(T0 + 1, 1, "w", 30)
    assert await store.reschedule(
        c, T0 + 2, polls=2, error_streak=1, first_404_at=None, last_error="x", last_body=None
    )
    assert await store.last_body("A") == b"1"
    (c,) = await store.claim_due(T0 + 2, 1, "w", 30)
    assert await store.release(c, T0 + 50)
    assert await store.next_due_at() == T0 + 50
    assert await store.claim_due(T0 + 49, 1, "w", 30) == []
    (row,) = await store.get_orders(["A"])
    assert (row.polls, row.error_streak, row.last_error) == (2, 1, "x")


async def test_empty_store_answers_none(store: Store) -> None:
    """Nothing pending, nothing due, nothing known: None and empty lists, not errors."""
    assert await store.next_due_at() is None
    assert await store.next_delivery_due_at(["s"]) is None
    assert await store.next_delivery_due_at([]) is None
    assert await store.last_body("nope") is None
    assert await store.get_event("nope") is None
    assert await store.get_orders(["nope"]) == []
    assert await store.replay(["nope"], ["s"], T0) == 0
    assert await store.get_meta("nope") is None
    assert await store.delivery_counts() == {
        s: 0 for s in ("pending", "delivered", "dead", "disabled")
    }


async def test_get_orders_keeps_the_asked_order(store: Store) -> None:
    """Rows come back in the order asked, unknown IDs left out."""
    await store.add_orders(["A", "B", "C"], T0, T0)
    rows = await store.get_orders(["C", "X", "A"])
    assert [r.order_id for r in rows] == ["C", "A"]
    assert rows[0].state == "pending" and rows[0].next_poll_at == T0


async def test_meta_is_overwritten(store: Store) -> None:
    """A small fact is stored, and a second write replaces it."""
    await store.set_meta("k", "1")
    await store.set_meta("k", "2")
    assert await store.get_meta("k") == "2"


async def test_update_meta_replaces_by_what_was_there(store: Store) -> None:
    """update_meta hands the old value (None at first) to the update and stores its result."""
    seen: list[str | None] = []

    def bump(old: str | None) -> str:
        seen.append(old)
        return str(int(old or "0") + 1)

    assert await store.update_meta("n", bump) == "1"
    assert await store.update_meta("n", bump) == "2"
    assert seen == [None, "1"] and await store.get_meta("n") == "2"


async def test_update_meta_that_fails_changes_nothing(store: Store) -> None:
    """An update that raises leaves the fact as it was, and the error reaches the caller."""
    await store.set_meta("k", "kept")

    def broken(old: str | None) -> str:
        raise ValueError("no")

    with pytest.raises(ValueError):
        await store.update_meta("k", broken)
    assert await store.get_meta("k") == "kept"


async def test_deliveries_only_for_the_named_sinks(store: Store) -> None:
    """claim_deliveries hands out only the sinks asked for; release_owner frees deliveries."""
    await store.add_orders(["A"], T0, T0)
    (c,) = await store.claim_due(T0, 1, "w", 30)
    await store.finish(c, "final", "COMPLETED", make_event("A", "COMPLETED", {}, T0), ["s1", "s2"])
    (d,) = await store.claim_deliveries(T0, 10, "w", 300, ["s2"])
    assert d.sink == "s2"
    assert await store.next_delivery_due_at(["s2"]) == T0 + 300
    await store.release_owner("w", T0 + 1)
    (again,) = await store.claim_deliveries(T0 + 1, 10, "x", 300, ["s2"])
    assert again.fence > d.fence
    assert not await store.record_delivery(d, T0 + 2, "delivered", "http 200", None)


async def test_pending_deliveries_are_counted_by_sink(store: Store) -> None:
    """What each sink still has to deliver (the daemon warns about sinks no longer
    configured, whose deliveries nobody would ever send)."""
    await store.add_orders(["A", "B"], T0, T0)
    for c in await store.claim_due(T0, 2, "w", 30):
        event = make_event(c.order_id, "COMPLETED", {}, T0)
        assert await store.finish(c, "final", "COMPLETED", event, ["s1", "s2"])
    (d,) = await store.claim_deliveries(T0, 1, "w", 300, ["s1"])
    assert await store.record_delivery(d, T0 + 1, "delivered", "http 200", None)
    assert await store.pending_deliveries_by_sink() == {"s1": 1, "s2": 2}


async def test_pull_forward_moves_only_what_lies_beyond_the_limit(store: Store) -> None:
    """After the wall clock stepped back, schedules beyond any the daemon can make are pulled
    to now; nearer ones and ended orders stay as they are."""
    await store.add_orders(["NEAR"], T0, T0 + 10)
    await store.add_orders(["FAR"], T0, T0 + 3600)
    assert await store.pull_forward(T0 + 60, T0) == 1
    rows = {r.order_id: r.next_poll_at for r in await store.get_orders(["NEAR", "FAR"])}
    assert rows == {"NEAR": T0 + 10, "FAR": T0}


async def test_a_large_add_counts_every_new_order(store: Store) -> None:
    """Adds bigger than one internal batch are all stored and counted once."""
    ids = [f"O-{i:06d}" for i in range(25_000)]
    assert await store.add_orders(iter(ids), T0, T0) == 25_000
    assert await store.add_orders([*ids[:10], "new"], T0, T0) == 1
    assert (await store.counts())["pending"] == 25_001


async def test_racing_finishers_end_an_order_once(two_stores: tuple[Store, Store]) -> None:
    """A lease taken over on another instance: of the two finishes exactly the current
    holder's lands, and the order has one event."""
    a, b = two_stores
    await a.add_orders(["A"], T0, T0)
    (old,) = await a.claim_due(T0, 1, "a", 5)
    (new,) = await b.claim_due(T0 + 6, 1, "b", 5)
    ev_a = make_event("A", "COMPLETED", {"by": "a"}, T0 + 7)
    ev_b = make_event("A", "COMPLETED", {"by": "b"}, T0 + 7)
    results = await asyncio.gather(
        a.finish(old, "final", "COMPLETED", ev_a, ["s"]),
        b.finish(new, "final", "COMPLETED", ev_b, ["s"]),
    )
    assert list(results) == [False, True]
    assert await a.get_event("A") == ev_b
    assert (await a.counts())["final"] == 1


async def test_queued_writes_ride_with_the_next_claim_or_land_alone(tmp_path: Path) -> None:
    """SQLite: a claim commits the writes queued before it in its own transaction (so it sees
    them, with no flush); with no claim coming, they still land on their own, shortly."""
    store = await SqliteStore.open(tmp_path, daemon=True, now=T0)
    other = sqlite3.connect(store.path, isolation_level=None)
    kw: dict[str, Any] = {"error_streak": 0, "first_404_at": None, "last_error": None}
    try:
        await store.add_orders(["A", "B"], T0, T0)
        a, b = await store.claim_due(T0, 2, "w", 30)
        store.reschedule_nowait(a, T0 + 1, polls=1, last_body=None, **kw)
        (again,) = await store.claim_due(T0 + 1, 5, "w", 30)
        assert (again.order_id, again.polls) == ("A", 1)
        store.reschedule_nowait(b, T0 + 2, polls=7, last_body=None, **kw)

        async def landed() -> bool:
            return bool(other.execute("SELECT polls FROM orders WHERE id = 'B'").fetchone()[0] == 7)

        await until(landed, timeout=5, interval=0.01)
    finally:
        other.close()
        await store.close()


async def test_a_failed_claim_logs_the_writes_it_carried(tmp_path: Path) -> None:
    """SQLite: when the claim's transaction fails, the queued writes it carried are logged as
    lost (the orders stay leased and are polled again), and the claim's error is raised."""
    async with leased_a(tmp_path) as (store, c, other):
        other.execute("BEGIN IMMEDIATE")
        with capture_logs() as logs:
            queue_first_poll(store, c)
            with pytest.raises(StoreError):
                await store.claim_due(T0 + 1, 1, "w", 30)
        other.execute("ROLLBACK")
        (failed,) = [e for e in logs if e["event"] == "store.write_failed"]
        assert failed["writes"] == 1
        await store.flush()
        (row,) = await store.get_orders(["A"])
        assert row.polls == 0  # lost, not written later behind the claim's back


async def test_shift_retries_moves_waiting_retries_by_the_step(store: Store) -> None:
    """After the wall clock stepped back, a retry waiting its turn comes that much sooner,
    never before now; deliveries in flight (leased) or settled are left alone."""
    await store.add_orders(["A", "B", "C", "D"], T0, T0)
    for c in await store.claim_due(T0, 4, "w", 30):
        event = make_event(c.order_id, "COMPLETED", {}, T0)
        assert await store.finish(c, "final", "COMPLETED", event, ["s"])
    claims = {d.event.order_id: d for d in await store.claim_deliveries(T0, 4, "w", 300, ["s"])}
    step = 3600.0
    assert await store.record_delivery(claims["A"], T0, "pending", "http 500", T0 + step + 5)
    assert await store.record_delivery(claims["B"], T0, "pending", "http 500", T0 + 100)
    assert await store.record_delivery(claims["C"], T0, "delivered", "http 200", None)
    # D stays leased: its attempt is under way, and its sender records what comes next.
    assert await store.shift_retries(step, T0) == 2
    rows = {r.order_id: r for r in await store.get_deliveries(["A", "B", "C", "D"])}
    assert rows["A"].next_attempt_at == pytest.approx(T0 + 5)
    assert rows["B"].next_attempt_at == T0
    assert rows["C"].state == "delivered"
    assert rows["D"].next_attempt_at == T0 + 300


async def _ended(store: Store, order_id: str, status: str, at: float, sinks: list[str]) -> None:
    """Add an order and end it with `status` at `at` (no other order may be due then)."""
    await store.add_orders([order_id], at, at)
    (c,) = await store.claim_due(at, 1, "w", 30)
    ev = make_event(order_id, status, {"id": order_id, "status": status}, at)
    assert await store.finish(c, "final", status, ev, sinks)


async def test_oldest_pending_lists_the_oldest_first_with_details(store: Store) -> None:
    """The status page's oldest pending orders: oldest added first, ties by id, at most
    `limit`, with their polls and last error; ended orders are not among them."""
    assert await store.oldest_pending(5) == []
    await store.add_orders(["C"], T0 + 2, T0 + 9_000)
    await store.add_orders(["B", "A"], T0 + 1, T0 + 9_000)
    await store.add_orders(["D"], T0 + 3, T0 + 9_000)
    await _ended(store, "OLDEST-BUT-ENDED", "COMPLETED", T0, [])
    (c,) = await store.claim_due(T0 + 9_000, 1, "w", 30)  # B or A: due together
    assert await store.reschedule(
        c,
        T0 + 9_500,
        polls=3,
        error_streak=1,
        first_404_at=None,
        last_error="http 503",
        last_body=None,
    )
    rows = await store.oldest_pending(3)
    assert [r.order_id for r in rows] == ["A", "B", "C"]
    polled = next(r for r in rows if r.order_id == c.order_id)
    assert (polled.polls, polled.last_error, polled.state) == (3, "http 503", "pending")
    assert len(await store.oldest_pending(100)) == 4


async def test_recent_finals_lists_the_latest_first_and_every_ending(store: Store) -> None:
    """The status page's recent finals: every final state, the latest finished first, at
    most `limit`; pending orders are not among them."""
    assert await store.recent_finals(5) == []
    await store.add_orders(["WAITING"], T0, T0 + 9_000)
    await _ended(store, "F1", "COMPLETED", T0 + 1, [])
    await _ended(store, "F2", "FAILED", T0 + 3, [])
    await _ended(store, "F3", "COMPLETED", T0 + 2, [])
    await store.add_orders(["X"], T0 + 4, T0 + 4)
    (c,) = await store.claim_due(T0 + 4, 1, "w", 30)
    ev = make_event("X", "EXPIRED", None, T0 + 4)
    assert await store.finish(c, "expired", "EXPIRED", ev, [])
    rows = await store.recent_finals(3)
    assert [(r.order_id, r.state, r.final_status, r.finished_at) for r in rows] == [
        ("X", "expired", "EXPIRED", T0 + 4),
        ("F2", "final", "FAILED", T0 + 3),
        ("F3", "final", "COMPLETED", T0 + 2),
    ]
    assert len(await store.recent_finals(100)) == 4


async def test_dead_deliveries_lists_the_latest_to_die_and_replay_takes_them_off(
    store: Store,
) -> None:
    """The status page's dead deliveries: the latest to die first, at most `limit`, with
    their order, sink, attempts and last outcome; a replay makes one pending again."""
    assert await store.dead_deliveries(5) == []
    await _ended(store, "A", "COMPLETED", T0, ["s1", "s2"])
    await _ended(store, "B", "FAILED", T0 + 1, ["s1"])
    claims = await store.claim_deliveries(T0 + 2, 10, "w", 30, ["s1", "s2"])
    at = {("A", "s1"): T0 + 5, ("A", "s2"): None, ("B", "s1"): T0 + 7}
    for d in claims:
        when = at[(d.event.order_id, d.sink)]
        if when is None:
            assert await store.record_delivery(d, T0 + 3, "delivered", "http 204", None)
        else:
            assert await store.record_delivery(d, when, "dead", "http 500", None)
    rows = await store.dead_deliveries(5)
    assert [(r.order_id, r.sink, r.attempts, r.last_outcome, r.dead_at) for r in rows] == [
        ("B", "s1", 1, "http 500", T0 + 7),
        ("A", "s1", 1, "http 500", T0 + 5),
    ]
    ev = await store.get_event("B")
    assert ev is not None and rows[0].event_id == ev.event_id
    assert [r.order_id for r in await store.dead_deliveries(1)] == ["B"]
    assert await store.replay(["B"], ["s1"], T0 + 8) == 1
    assert [r.order_id for r in await store.dead_deliveries(5)] == ["A"]


async def test_the_status_page_lists_read_indexes_not_tables(sqlite_store: SqliteStore) -> None:
    """The status page asks for a few rows of tables that may hold millions: each of its
    queries walks an index in order, and neither scans a table nor sorts all of it."""
    await _ended(sqlite_store, "A", "COMPLETED", T0, ["s1"])
    await sqlite_store.add_orders(["B"], T0, T0 + 9_000)
    seen: list[str] = []
    sqlite_store.db.set_trace_callback(seen.append)
    try:
        assert len(await sqlite_store.oldest_pending(20)) == 1
        assert len(await sqlite_store.recent_finals(20)) == 1
        assert await sqlite_store.dead_deliveries(20) == []
    finally:
        sqlite_store.db.set_trace_callback(None)
    selects = [sql for sql in seen if sql.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 3, seen
    for sql in selects:
        plan = [r[3] for r in sqlite_store.db.execute("EXPLAIN QUERY PLAN " + sql)]
        assert not [
            step
            for step in plan
            if (step.startswith("SCAN") and "INDEX" not in step)
            or step == "USE TEMP B-TREE FOR ORDER BY"
        ], (sql, plan)


async def test_found_by_names_what_brought_the_final_get(store: Store) -> None:
    """An order expedited (by a sweep, by a push) and then found final on that claim is found
    by it; one found final on an ordinary claim, even after an expedite, by a poll."""
    await store.add_orders(["L"], T0, T0 + 0.5)
    await store.add_orders(["S", "P", "Q"], T0, T0 + 1)
    (lc,) = await store.claim_due(T0 + 1, 1, "w", 30)  # L's lease: expedite cannot move it
    assert lc.order_id == "L"
    assert await store.expedite(["S", "L"], by="sweep") == (["S"], ["L"])
    assert await store.expedite(["P"]) == (["P"], [])  # a push, by default
    claims = {c.order_id: c for c in await store.claim_due(T0 + 2, 10, "w", 30)}
    assert claims["S"].due_at == claims["P"].due_at == 0.0 and claims["Q"].due_at == T0 + 1
    await store.expedite(["Q"], by="sweep")  # leased: the claim in hand was an ordinary one
    for oid, c in [*claims.items(), ("L", lc)]:
        ev = make_event(oid, "COMPLETED", {"id": oid, "status": "COMPLETED"}, T0 + 3)
        assert await store.finish(c, "final", "COMPLETED", ev, [])
    rows = await store.get_orders(["S", "P", "Q", "L"])
    assert [r.found_by for r in rows] == ["sweep", "push", "poll", "poll"]


async def test_defer_pushes_back_only_due_unleased_orders(store: Store) -> None:
    """defer moves pending orders due before the bound to `until`; it leaves leased,
    expedited, later, ended and soon-expiring orders alone, and ignores unknown IDs."""
    await store.add_orders(["due", "leased", "fast"], T0, T0 + 1)
    await store.add_orders(["later"], T0, T0 + 50)
    await store.add_orders(["dying"], T0 - 95, T0 + 1)  # gives up at T0 + 5 (100 s)
    await store.add_orders(["done"], T0, T0)
    (done,) = await store.claim_due(T0, 10, "w", 30)
    await store.finish(done, "final", "FAILED", make_event("done", "FAILED", {}, T0), [])
    for c in await store.claim_due(T0 + 1, 10, "w", 30):
        if c.order_id != "leased":
            await store.release(c)  # due at T0 + 1 again
    await store.expedite(["fast"], by="sweep")
    ids = ["due", "later", "leased", "fast", "dying", "done", "unknown"]
    assert await store.defer(ids, due_before=T0 + 20, until=T0 + 30, give_up_after_s=100) == 1
    rows = {r.order_id: r for r in await store.get_orders(ids)}
    times = {oid: r.next_poll_at for oid, r in rows.items()}
    assert times == {
        "due": T0 + 30,
        "later": T0 + 50,
        "leased": T0 + 31,  # its lease's end
        "fast": 0.0,
        "dying": T0 + 1,
        "done": None,
    }
    again = await store.defer(["due"], due_before=T0 + 20, until=T0 + 60, give_up_after_s=100)
    assert again == 0  # due at T0 + 30 now: not before the bound
    assert await store.defer([], due_before=T0 + 20, until=T0 + 30, give_up_after_s=100) == 0


async def test_one_lease_holder_at_a_time(two_stores: tuple[Store, Store]) -> None:
    """A named lease is held by one owner until it runs out; its holder may extend it;
    another owner takes it once it has run out."""
    a, b = two_stores
    assert await a.hold_lease("sweep", "a", T0, 10)
    assert not await b.hold_lease("sweep", "b", T0 + 5, 10)
    assert await a.hold_lease("sweep", "a", T0 + 5, 10)  # extended to T0 + 15
    assert not await b.hold_lease("sweep", "b", T0 + 14, 10)
    assert await b.hold_lease("other", "b", T0 + 14, 10)  # another name, another lease
    assert await b.hold_lease("sweep", "b", T0 + 15, 10)
    assert not await a.hold_lease("sweep", "a", T0 + 16, 10)
    results = await asyncio.gather(
        *(s.hold_lease("race", o, T0, 10) for s, o in ((a, "a"), (b, "b")))
    )
    assert sorted(results) == [False, True]


async def test_a_store_from_before_found_by_gains_the_column(tmp_path: Path) -> None:
    """A state file made before orders had found_by opens, gains the column and keeps its
    orders (their found_by unknown)."""
    s = await SqliteStore.open(tmp_path / "state", daemon=True, now=T0)
    await s.add_orders(["OLD"], T0, T0)
    await s.close()
    with sqlite3.connect(tmp_path / "state" / "orderwatch.sqlite3") as db:
        db.execute("ALTER TABLE orders DROP COLUMN found_by")
    s = await SqliteStore.open(tmp_path / "state", daemon=True, now=T0)
    try:
        (row,) = await s.get_orders(["OLD"])
        assert (row.state, row.found_by) == ("pending", None)
        assert await s.expedite(["OLD"], by="sweep") == (["OLD"], [])
    finally:
        await s.close()


@pytest.mark.postgres
async def test_a_postgres_store_from_before_found_by_gains_the_column(pg_dsn: str) -> None:
    """The same on PostgreSQL: the column is added at open, under the migration lock."""
    import psycopg

    from orderwatch.store.postgres import PostgresStore

    s = await PostgresStore.open(pg_dsn)
    await s.add_orders(["OLD"], T0, T0)
    await s.close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE orders DROP COLUMN found_by")
    s = await PostgresStore.open(pg_dsn)
    try:
        assert await s.expedite(["OLD"], by="sweep") == (["OLD"], [])
        (row,) = await s.get_orders(["OLD"])
        assert (row.state, row.found_by) == ("pending", "sweep")
    finally:
        await s.close()
