"""The sweep of the list endpoint: what a page does to tracked orders, when paging stops, how
a failing or refused list falls back to per-order polling, pauses, and one sweep among
replicas. Against the simulator's list, a real store and the real client."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from orderwatch.cli.status_view import render_status
from orderwatch.config.models import PollingSettings
from orderwatch.devtools.sim_list import ListFaults
from orderwatch.devtools.simulator import RunningSim, SimOptions, running_simulator
from orderwatch.polling.answers import Kind, Listed
from orderwatch.polling.client import RunaClient
from orderwatch.polling.gate import MIN_429_PAUSE_S
from orderwatch.polling.scheduler import Poller
from orderwatch.polling.sweep import Sweep, SweepTuning, created_at
from orderwatch.store.base import Store
from orderwatch.store.sqlite import SqliteStore

from harness import API_KEY, FakeClock, one_worker, running_daemon, settings_for, until

FAR = 3600.0  # first polls this far out: only what the sweep expedites is due


@dataclass
class Rig:
    rs: RunningSim
    store: Store
    poller: Poller
    sweep: Sweep
    found: list[int]

    def pages(self) -> list[str]:
        return [q for _, q in self.rs.sim.list.requests]


@asynccontextmanager
async def rig(
    tmp_path: Path,
    opts: SimOptions,
    tuning: SweepTuning | None = None,
    wall: Callable[[], float] = time.time,
) -> AsyncIterator[Rig]:
    """A one-worker poller and its sweep on SQLite, against a simulator."""
    (tmp_path / "orders").mkdir(mode=0o700)
    async with running_simulator(opts) as rs:
        store = await SqliteStore.open(tmp_path / "state", daemon=True, now=wall())
        try:
            async with RunaClient(
                rs.base_url, API_KEY, api_version="2024-02-05", timeout_s=2, max_connections=2
            ) as client:
                poller = one_worker(
                    store,
                    client,
                    polling=PollingSettings(),
                    output_dir=tmp_path / "orders",
                    wall=wall,
                    start_full=False,
                )
                found: list[int] = []
                sweep = Sweep(poller.d, lambda leased: found.append(len(leased)), tuning)
                yield Rig(rs, store, poller, sweep, found)
        finally:
            await store.close()


def sim(**kw: object) -> SimOptions:
    return SimOptions(api_key=API_KEY, complete_after=FAR, **kw)  # type: ignore[arg-type]


async def test_a_sweep_reads_tracked_orders_on_every_page(tmp_path: Path) -> None:
    """Across pages of tracked and untracked orders: the final tracked ones are expedited
    (one GET each brings the body; found by the sweep), the PROCESSING ones deferred,
    untracked ones untouched; paging follows the `after` cursor and stops once every
    pending order was seen, before the account's history."""
    async with rig(tmp_path, sim(history=2000)) as r:
        tracked = [f"O-T{i:03d}" for i in range(400)]
        others = [f"O-X{i:03d}" for i in range(400)]
        for t, o in zip(tracked, others, strict=True):  # interleaved, as in a shared account
            r.rs.sim.create([t, o])
        done = tracked[::10]
        r.rs.sim.complete(done + others[::3])
        now = time.time()
        await r.store.add_orders(tracked, now, now + 1)
        result = await r.sweep.sweep_once(len(tracked))
        assert (result.outcome, result.pages, result.seen) == ("covered", 2, 400)
        assert (result.expedited, result.deferred) == (40, 360) and r.found
        assert r.pages()[1].startswith("limit=500&after=")
        await r.poller.run_until_idle()
        rows = {x.order_id: x for x in await r.store.get_orders(tracked)}
        assert {o for o, x in rows.items() if x.state == "final"} == set(done)
        assert {rows[o].found_by for o in done} == {"sweep"}
        assert all(rows[o].next_poll_at >= now + 9 for o in tracked if o not in done)  # type: ignore[operator]
        assert r.rs.sim.received == len(done)  # one GET per final, none for the rest
        assert all(x.polls == 0 for x in rows.values())  # a look at the list is no GET
        shown = [{**asdict(rows[o]), "deliveries": []} for o in (done[0], tracked[1])]
        table = render_status({"store": "postgresql", "orders": shown}, time.time()).splitlines()
        assert table[1].split()[:4] == ["ORDER", "STATE", "RESULT", "FOUND"]
        assert table[2].split()[:4] == [done[0], "final", "COMPLETED", "sweep"]
        assert table[3].split()[:4] == [tracked[1], "pending", "-", "-"]


async def test_paging_stops_at_orders_older_than_any_tracked(tmp_path: Path) -> None:
    """Some tracked orders are nowhere in the list: paging goes on past the tracked ones and
    stops at the first page that shows only orders created before the oldest pending one
    was added, well before its page budget."""
    tuning = SweepTuning(extra_pages=6)
    async with rig(tmp_path, sim(history=3000), tuning) as r:
        r.rs.sim.create([f"O-T{i}" for i in range(10)])
        now = time.time()
        await r.store.add_orders([f"O-T{i}" for i in range(10)], now, now + FAR)
        await r.store.add_orders(["O-404-A", "O-404-B"], now, now + FAR)  # never listed
        result = await r.sweep.sweep_once(12)
        assert (result.outcome, result.pages, result.seen) == ("covered", 2, 10)
        assert len(r.pages()) == 2


async def test_an_empty_page_ends_the_sweep(tmp_path: Path) -> None:
    """An account with no orders listed yet: one empty page, and the sweep ends there."""
    async with rig(tmp_path, sim()) as r:
        now = time.time()
        await r.store.add_orders(["O-E1", "O-E2"], now, now + FAR)
        result = await r.sweep.sweep_once(2)
        assert (result.outcome, result.pages, result.seen, result.expedited) == ("end", 1, 0, 0)
        r.rs.sim.create(["O-E1"])
        r.rs.sim.script_list("empty")  # a page with nothing on it, cursors and all
        assert (await r.sweep.sweep_once(2)).outcome == "end"
        assert r.rs.sim.received == 0


@pytest.mark.parametrize("fault", ["malformed", "pagination_error", "500"])
async def test_a_page_that_fails_ends_that_sweep_and_is_logged_once(
    tmp_path: Path, fault: str
) -> None:
    """A malformed page, a 400 pagination_error or a 5xx ends the sweep where it is (orders
    not seen stay with per-order polling); a run of failures is logged once, and its end."""
    async with rig(tmp_path, sim(history=1200)) as r:
        r.rs.sim.create(["O-F1"])
        r.rs.sim.complete(["O-F1"])
        now = time.time()
        await r.store.add_orders(["O-F1", "O-404-F"], now, now + FAR)
        r.rs.sim.script_list("ok", fault, fault)
        with capture_logs() as logs:
            first = await r.sweep.sweep_once(2)  # page 1 read, page 2 fails
            second = await r.sweep.sweep_once(2)
            third = await r.sweep.sweep_once(2)
        assert (first.outcome, first.pages, first.expedited) == ("failed", 2, 1)
        assert (second.outcome, second.pages) == ("failed", 1)
        assert third.outcome != "failed"
        events = [e["event"] for e in logs if e["event"].startswith("sweep.")]
        assert events == ["sweep.failed", "sweep.recovered"]
        assert r.poller.d.metrics.sweeps.labels("failed")._value.get() == 2
        assert not r.poller.d.gate.closed()  # the list's trouble pauses nothing


async def test_an_order_final_in_the_list_but_processing_on_get_stays_pending(
    tmp_path: Path,
) -> None:
    """The list says COMPLETED, the GET says PROCESSING: the GET is trusted, the order stays
    pending, and the list is not believed about it again until distrust_s has passed."""
    clock = FakeClock()
    async with rig(tmp_path, sim(), SweepTuning(distrust_s=60), wall=clock) as r:
        r.rs.sim.create(["O-LIE"])
        r.rs.sim.list.list_status["O-LIE"] = "COMPLETED"
        await r.store.add_orders(["O-LIE"], clock.now, clock.now + FAR)
        assert (await r.sweep.sweep_once(1)).expedited == 1
        await r.poller.run_until_idle()
        (row,) = await r.store.get_orders(["O-LIE"])
        assert (row.state, row.polls, r.rs.sim.received) == ("pending", 1, 1)
        clock.now += 30
        assert (await r.sweep.sweep_once(1)).expedited == 0
        (row,) = await r.store.get_orders(["O-LIE"])
        assert row.next_poll_at != 0.0  # left to its own cadence
        clock.now += 31
        assert (await r.sweep.sweep_once(1)).expedited == 1  # asked once more, a minute on
        r.rs.sim.complete(["O-LIE"])
        await r.poller.run_until_idle()
        (row,) = await r.store.get_orders(["O-LIE"])
        assert (row.state, row.found_by, r.rs.sim.received) == ("final", "sweep", 2)


def test_when_listed_orders_were_created() -> None:
    """created_at when the page gives it, else the time in a ULID order ID, else unknown."""
    iso = Listed("O-1", "COMPLETED", "2024-02-05T00:00:00Z")
    assert created_at(iso) == 1707091200.0
    assert created_at(Listed("O-01H5WQGHKCBB85MQFM68S9KJ5Q", "PROCESSING", None)) == 1689960072.812
    for undated in ("O-T1", "O-81H5WQGHKCBB85MQFM68S9KJ5Q", "O-01H5WQGHKCBB85MQFM68S9KJ5U"):
        assert created_at(Listed(undated, "PROCESSING", None)) is None
    assert created_at(Listed("O-1", "FAILED", "yesterday")) is None


# -- the daemon ------------------------------------------------------------------------------
RATE = 5  # requests per second: a sweep is wanted above RATE x 10 s = 50 pending orders


def daemon_settings(tmp_path: Path, rs: RunningSim, **polling: object) -> object:
    return settings_for(
        tmp_path,
        rs.base_url,
        rate_limit={"requests_per_second": RATE, "max_concurrency": 2},
        polling={"initial_delay": "1s", "max_interval": "2s", **polling},
    )


async def test_the_daemon_sweeps_when_many_orders_wait(tmp_path: Path) -> None:
    """60 orders at 5 requests/s: the daemon reads the list, and orders that complete are
    found by the sweep with one GET each, most of them."""
    async with running_simulator(sim(history=700)) as rs:
        ids = [f"O-D{i:02d}" for i in range(60)]
        rs.sim.create(ids)
        async with running_daemon(daemon_settings(tmp_path, rs)) as d:  # type: ignore[arg-type]
            await d.add_orders(ids)

            async def swept() -> bool:
                return rs.sim.list.received >= 1

            await until(swept)
            rs.sim.complete(ids[:20])

            async def finals() -> bool:
                return (await d.store.counts())["final"] == 20  # type: ignore[union-attr]

            await until(finals, timeout=40)
            rows = await d.store.get_orders(ids[:20])  # type: ignore[union-attr]
            assert sum(x.found_by == "sweep" for x in rows) >= 10
            assert d.metrics.poll.polls.by_list_kind[Kind.LISTED] >= 1


async def test_403_on_the_list_only_disables_the_sweep(tmp_path: Path) -> None:
    """A key that reads orders but may not list them: one list request, one log line, and
    orders still end by per-order polling; the daemon stays ready."""
    async with running_simulator(sim()) as rs:
        rs.sim.set_list_faults(ListFaults(forbidden=True))
        ids = [f"O-N{i:02d}" for i in range(60)]
        rs.sim.create(ids, complete_after=0)
        with capture_logs() as logs:
            async with running_daemon(daemon_settings(tmp_path, rs)) as d:  # type: ignore[arg-type]
                await d.add_orders(ids)

                async def finals() -> bool:
                    refused = rs.sim.list.received == 1
                    return refused and (await d.store.counts())["final"] >= 15  # type: ignore[union-attr]

                await until(finals, timeout=60)
                assert d.readiness() == (True, "ok")
                rows = [x for x in await d.store.get_orders(ids) if x.state == "final"]  # type: ignore[union-attr]
        assert rs.sim.list.received == 1
        assert [e["event"] for e in logs].count("sweep.disabled") == 1
        assert {x.found_by for x in rows} == {"poll"}


async def test_sweep_off_sends_no_list_request(tmp_path: Path) -> None:
    """polling.sweep: off keeps to one GET per order, however many wait."""
    async with running_simulator(sim()) as rs:
        ids = [f"O-O{i:02d}" for i in range(60)]
        async with running_daemon(daemon_settings(tmp_path, rs, sweep="off")) as d:  # type: ignore[arg-type]
            await d.add_orders(ids)

            async def polling() -> bool:  # with sweep: auto, the first sweep comes after ~1 s
                return rs.sim.received >= 20

            await until(polling, timeout=30)
        assert rs.sim.list.received == 0


@pytest.mark.slow
async def test_a_429_on_a_list_request_pauses_everything(tmp_path: Path) -> None:
    """The list's 429 pauses every request, GETs and pages alike, for at least 5 s."""
    async with running_simulator(sim()) as rs:
        rs.sim.script_list("429")
        ids = [f"O-R{i:02d}" for i in range(60)]
        async with running_daemon(daemon_settings(tmp_path, rs)) as d:  # type: ignore[arg-type]
            await d.add_orders(ids)

            async def limited() -> bool:
                return bool(rs.sim.rate_limited_at)

            await until(limited)
            t429 = rs.sim.rate_limited_at[0]

            async def resumed() -> bool:
                return any(t > t429 + MIN_429_PAUSE_S for t in rs.sim.arrivals)

            await until(resumed, timeout=20)
            assert d.metrics.poll.rate_limited._value.get() == 1
        # requests already sent when the 429 came back land within moments of it
        during = [t - t429 for t in rs.sim.arrivals if 0.2 < t - t429 < MIN_429_PAUSE_S]
        assert during == []


@pytest.mark.postgres
@pytest.mark.slow
async def test_replicas_on_postgres_share_one_sweep(tmp_path: Path, pg_dsn: str) -> None:
    """Two replicas on one database: one sweeps (the lease), at its period, and the list
    requests never come doubled; the other does not sweep meanwhile."""
    from orderwatch.store.postgres import PostgresStore

    rate = 20
    tuning = SweepTuning(min_period_s=0.5)
    ids = [f"O-P{i:03d}" for i in range(300)]  # above 20 x 10 s: both want to sweep
    async with running_simulator(sim(history=100)) as rs:
        rs.sim.create(ids)
        stores = [await PostgresStore.open(pg_dsn) for _ in range(2)]
        await stores[0].add_orders(ids, time.time(), time.time() + FAR)
        sweeps = []
        async with contextlib.AsyncExitStack() as stack:
            for i, store in enumerate(stores):
                client = await stack.enter_async_context(
                    RunaClient(
                        rs.base_url, API_KEY, api_version="2024-02-05", timeout_s=2,
                        max_connections=2,
                    )
                )  # fmt: skip
                poller = one_worker(
                    store, client, polling=PollingSettings(), output_dir=tmp_path,
                    wall=time.time, owner=f"replica-{i}",
                )  # fmt: skip
                poller.d.limiter = store.shared_limiter(rate)  # type: ignore[assignment]
                poller.d.rate = rate
                sweeps.append(Sweep(poller.d, lambda leased: None, tuning))
            stop = asyncio.Event()
            loops = [asyncio.create_task(s.run(stop)) for s in sweeps]

            async def enough() -> bool:
                return rs.sim.list.received >= 8

            await until(enough, timeout=30)
            stop.set()
            await asyncio.gather(*loops)
        for store in stores:
            await store.close()
    times = sorted(t for t, _ in rs.sim.list.requests)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.4, gaps  # one sweeper, one page each 0.5 s period
    by_replica = [sum(s.d.metrics.sweeps.labels(o)._value.get() for o in ("end",)) for s in sweeps]
    assert sorted(by_replica) == [0, len(times)]


async def test_a_held_claim_seen_final_is_polled_at_once(tmp_path: Path) -> None:
    """An order this poller holds for a later poll (leased, so the store cannot expedite
    it) that the list shows final is polled at once, not when its hold ends: found by the
    sweep."""
    polling = PollingSettings.model_validate(
        {"initial_delay": 8, "backoff_factor": 1, "max_interval": 8, "jitter": 0}
    )
    async with rig(tmp_path, sim()) as r:
        r.poller.set_polling(polling)
        r.rs.sim.create(["O-HELD"])
        now = time.time()
        await r.store.add_orders(["O-HELD"], now, now)
        stop = asyncio.Event()
        running = asyncio.create_task(r.poller.run(stop, 2.0))

        async def held() -> bool:
            return r.rs.sim.received == 1 and bool(r.poller._held)

        await until(held)  # polled once, next poll 8 s on, held in memory till then
        r.rs.sim.complete(["O-HELD"])
        sweep = Sweep(r.poller.d, r.poller.found)
        result = await sweep.sweep_once(1)
        assert (result.seen, result.expedited) == (1, 0)  # leased: the store could not

        async def final() -> bool:
            return (await r.store.counts())["final"] == 1

        await until(final, timeout=6)  # before the held poll's 8 s
        stop.set()
        await running
        (row,) = await r.store.get_orders(["O-HELD"])
        assert (row.found_by, r.rs.sim.received) == ("sweep", 2)
