"""Held claims: an order polled again within HOLD_S of its claim stays in memory between polls,
and what those polls learned reaches the store when it leaves memory, whichever way it leaves."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import pytest

from orderwatch.devtools.simulator import Faults, RunningSim, SimOptions, running_simulator
from orderwatch.ops.daemon import Daemon
from orderwatch.polling.client import RunaClient
from orderwatch.polling.policy import Reschedule
from orderwatch.store.base import OrderRow, Store
from orderwatch.store.postgres import PostgresStore
from orderwatch.store.sqlite import SqliteStore

from harness import (
    API_KEY,
    FakeClock,
    changes_of,
    one_worker,
    running_daemon,
    settings_for,
    until,
)


def gets(rs: RunningSim, order_id: str) -> int:
    return sum(1 for _, oid in rs.sim.requests if oid == order_id)


async def row_of(d: Daemon, order_id: str) -> OrderRow:
    assert d.store is not None
    (row,) = await d.store.get_orders([order_id])
    return row


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_held_polls_are_written_when_the_daemon_stops(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """While held, polls write nothing; stopping writes the count of every PROCESSING poll."""
    dsn = request.getfixturevalue("pg_dsn") if backend == "postgres" else None
    async with running_simulator(SimOptions(api_key=API_KEY, complete_after=3600)) as rs:
        polling = {"initial_delay": "200ms", "max_interval": "2s", "jitter": 0}
        settings = settings_for(tmp_path, rs.base_url, polling=polling, state_dsn=dsn)
        async with running_daemon(settings) as d:
            await d.add_orders(["O-HELD"])

            async def waiting_in_memory() -> bool:  # stopped between polls, not during one
                assert d.poller is not None
                return gets(rs, "O-HELD") >= 3 and d.poller.holding > 0

            await until(waiting_in_memory, rs.sim.changed, *changes_of(d))
            assert (await row_of(d, "O-HELD")).polls == 0  # held: nothing written yet
        store: Store = (
            await PostgresStore.open(dsn) if dsn else await SqliteStore.open(tmp_path / "state")
        )
        try:
            (row,) = await store.get_orders(["O-HELD"])
        finally:
            await store.close()
        assert row.state == "pending"
        assert row.polls == gets(rs, "O-HELD")  # every answer was PROCESSING


async def test_a_hold_that_ends_writes_and_the_order_is_claimed_again(tmp_path: Path) -> None:
    """Past the hold (HOLD_S; 0.3 s here) after its claim the next reschedule is written, and
    polling goes on. A poller of its own, as the daemon runs it."""
    async with (
        running_simulator(SimOptions(api_key=API_KEY, complete_after=3600)) as rs,
        RunaClient(
            rs.base_url, API_KEY, api_version="2024-02-05", timeout_s=2, max_connections=1
        ) as client,
    ):
        settings = settings_for(tmp_path, rs.base_url, polling={"max_interval": "20ms"})
        store = await SqliteStore.open(tmp_path / "state", daemon=True, now=time.time())
        p = one_worker(
            store,
            client,
            polling=settings.polling,
            output_dir=settings.output_dir,
            wall=time.time,
            start_full=False,
            hold_s=0.3,
        )
        await store.add_orders(["O-CYCLE"], time.time(), time.time())
        stop = asyncio.Event()
        running = asyncio.create_task(p.run(stop, 1.0))
        try:

            async def written_twice() -> bool:
                (row,) = await store.get_orders(["O-CYCLE"])
                return row.polls >= 2 * 0.3 / 0.02 * 0.5

            await until(written_twice, p.d.progress)
            before = gets(rs, "O-CYCLE")

            async def still_polled() -> bool:
                return gets(rs, "O-CYCLE") > before

            await until(still_polled, rs.sim.changed)
        finally:
            stop.set()
            await running
            await store.close()


async def test_a_429_gives_a_held_order_back_with_its_polls(tmp_path: Path) -> None:
    """A 429 releases the order; a held one is released with the polls not yet written."""
    async with running_simulator(SimOptions(api_key=API_KEY, complete_after=3600)) as rs:
        settings = settings_for(tmp_path, rs.base_url, polling={"max_interval": "20ms"})
        async with running_daemon(settings) as d:
            await d.add_orders(["O-PAUSED"])

            async def polled() -> bool:
                return gets(rs, "O-PAUSED") >= 3

            await until(polled, rs.sim.changed)
            rs.sim.set_faults(Faults(rate_429=1.0, retry_after="1"))

            async def given_back() -> bool:
                return (await row_of(d, "O-PAUSED")).polls >= 3

            await until(
                given_back, *changes_of(d), timeout=5.0
            )  # HOLD_S (10 s) would not have written it


@pytest.mark.slow
async def test_an_order_that_expires_while_held_quotes_the_body_it_held(tmp_path: Path) -> None:
    """Expiry on a failed GET quotes the last PROCESSING body, which only memory has."""
    async with running_simulator(SimOptions(api_key=API_KEY, complete_after=3600)) as rs:
        settings = settings_for(
            tmp_path, rs.base_url, polling={"max_interval": "20ms", "give_up_after": "3s"}
        )
        async with running_daemon(settings) as d:
            await d.add_orders(["O-LAPSED"])

            async def polled() -> bool:
                return gets(rs, "O-LAPSED") >= 3

            await until(polled, rs.sim.changed)
            rs.sim.set_faults(Faults(rate_reset=1.0))

            async def ended() -> bool:
                return (await row_of(d, "O-LAPSED")).state != "pending"

            await until(ended, *changes_of(d))
            event = await d.store.get_event("O-LAPSED")  # type: ignore[union-attr]
        assert event is not None and event.event_type == "order.expired"
        data = json.loads(event.body)["data"]
        assert data["last_response"]["status"] == "PROCESSING"


async def test_a_held_claim_too_late_in_its_lease_is_not_sent_but_its_polls_are_written(
    tmp_path: Path,
) -> None:
    """A held claim that waited past the point where a GET could finish inside its lease is
    left unsent, as any claim is; what its earlier polls learned is written all the same."""
    wall = FakeClock()
    store = await SqliteStore.open(tmp_path / "state", daemon=True, now=wall())
    try:
        await store.add_orders(["O-LATE"], wall(), wall())
        (claim,) = await store.claim_due(wall(), 1, "me", 60.0)
        with tempfile.TemporaryDirectory() as out:
            settings = settings_for(tmp_path, "http://127.0.0.1:9/v2")  # never contacted
            client = RunaClient(
                settings.runa.base_url,
                API_KEY,
                api_version="2024-02-05",
                timeout_s=2,
                max_connections=1,
            )
            p = one_worker(store, client, polling=settings.polling, output_dir=Path(out), wall=wall)
            body = b'{"id": "O-LATE", "status": "PROCESSING"}'
            unsaved = Reschedule(claim.due_at, 4, 0, None, None, body)
            wall.now += 58.0  # the lease ends in 2 s: less than a request's timeout
            await p.poll_one(claim, unsaved)  # no client session: a GET would fail loudly
        await store.flush()
        (row,) = await store.get_orders(["O-LATE"])
        assert row.polls == 4 and row.next_poll_at == claim.due_at
        assert await store.last_body("O-LATE") == body
    finally:
        await store.close()
