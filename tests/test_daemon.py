"""The daemon end to end against the simulator: each answer class leads to what SPEC says."""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from orderwatch.devtools.simulator import SimOptions, running_simulator
from orderwatch.polling.answers import Kind
from orderwatch.store.base import Store
from orderwatch.store.sqlite import DB_NAME as SQLITE_NAME
from orderwatch.store.sqlite import SqliteStore

from harness import SECRET, changes_of, running_daemon, settings_for, states, until


def sim_opts(**kw: object) -> SimOptions:
    from harness import API_KEY

    return SimOptions(api_key=API_KEY, **kw)  # type: ignore[arg-type]


def store_of(d: object) -> Store:
    s = d.store  # type: ignore[attr-defined]
    assert s is not None
    return s  # type: ignore[no-any-return]


async def all_ended(d: object, ids: list[str]) -> bool:
    return all(s != "pending" for s in (await states(d, ids)).values())  # type: ignore[arg-type]


async def test_processing_then_final_writes_exact_payload(tmp_path: Path) -> None:
    """PROCESSING is polled again; COMPLETED/FAILED write the API body (0600) and an event."""
    async with running_simulator(sim_opts(complete_after=0.3, fail_ratio=0.5, seed=3)) as rs:
        settings = settings_for(tmp_path, rs.base_url)
        ids = [f"O-FINAL{i}" for i in range(10)]
        async with running_daemon(settings) as d:
            await d.add_orders(ids)
            await until(lambda: all_ended(d, ids), *changes_of(d))
            rows = await store_of(d).get_orders(ids)
        assert {r.final_status for r in rows} <= {"COMPLETED", "FAILED"}
        assert all(r.polls >= 1 for r in rows)  # seen PROCESSING at least once
        for oid in ids:
            f = tmp_path / "orders" / f"{oid}.json"
            assert json.loads(f.read_bytes()) == rs.sim.payload(oid)
            assert stat.S_IMODE(f.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
        assert not list((tmp_path / "orders").glob(".tmp-*"))


async def test_not_found_ends_after_grace(tmp_path: Path) -> None:
    """A 404 that lasts not_found_grace ends the order as not_found, with no payload file."""
    async with running_simulator(sim_opts()) as rs:
        settings = settings_for(tmp_path, rs.base_url, polling={"not_found_grace": "500ms"})
        async with running_daemon(settings) as d:
            await d.add_orders(["O-404-gone"])
            await until(lambda: all_ended(d, ["O-404-gone"]), *changes_of(d))
            (row,) = await store_of(d).get_orders(["O-404-gone"])
            event = await store_of(d).get_event("O-404-gone")
        assert (row.state, row.final_status) == ("not_found", "NOT_FOUND")
        assert event is not None and event.event_type == "order.not_found"
        data = json.loads(event.body)["data"]
        assert data["status"] == "NOT_FOUND" and data["last_response"]["type"] == "not_found"
        assert not (tmp_path / "orders" / "O-404-gone.json").exists()


async def test_brief_404_then_found(tmp_path: Path) -> None:
    """A 404 shorter than the grace period is retried and the order then completes."""
    async with running_simulator(sim_opts(not_found_for=0.3, complete_after=0.5)) as rs:
        settings = settings_for(tmp_path, rs.base_url, polling={"not_found_grace": "5s"})
        async with running_daemon(settings) as d:
            await d.add_orders(["O-LATE"])
            await until(lambda: all_ended(d, ["O-LATE"]), *changes_of(d))
            (row,) = await store_of(d).get_orders(["O-LATE"])
        assert row.final_status == "COMPLETED"


async def test_expired_after_give_up(tmp_path: Path) -> None:
    """Still PROCESSING at give_up_after: expired, event with the last API body, no file."""
    async with running_simulator(sim_opts(complete_after=3600)) as rs:
        settings = settings_for(tmp_path, rs.base_url, polling={"give_up_after": "1s"})
        async with running_daemon(settings) as d:
            await d.add_orders(["O-SLOW"])
            await until(lambda: all_ended(d, ["O-SLOW"]), *changes_of(d))
            event = await store_of(d).get_event("O-SLOW")
        assert event is not None and event.event_type == "order.expired"
        data = json.loads(event.body)["data"]
        assert data["status"] == "EXPIRED" and data["last_response"]["status"] == "PROCESSING"
        assert not (tmp_path / "orders" / "O-SLOW.json").exists()


async def _retried_then_final(tmp_path: Path, fault: str, kind: str) -> None:
    async with running_simulator(sim_opts(complete_after=0)) as rs:
        rs.sim.script(fault, fault)
        settings = settings_for(tmp_path, rs.base_url, runa={"timeout": "300ms"})
        async with running_daemon(settings) as d:
            await d.add_orders(["O-FLAKY"])
            await until(lambda: all_ended(d, ["O-FLAKY"]), *changes_of(d))
            (row,) = await store_of(d).get_orders(["O-FLAKY"])
            failures = d.metrics.poll.polls.by_kind[Kind(kind)]
        assert row.final_status == "COMPLETED"
        assert failures == 2
        # both failures counted on the error budget, none on the normal cadence
        assert (row.error_streak, row.polls) == (2, 0)
        assert json.loads((tmp_path / "orders" / "O-FLAKY.json").read_bytes())["id"] == "O-FLAKY"


async def test_server_error_retried(tmp_path: Path) -> None:
    """5xx answers are retried with back-off for that order, then it completes."""
    await _retried_then_final(tmp_path, "500", "server_error")


async def test_malformed_body_retried(tmp_path: Path) -> None:
    """A 200 whose body is not a valid order is retried, never written as a payload."""
    await _retried_then_final(tmp_path, "malformed", "invalid")


async def test_connection_reset_retried(tmp_path: Path) -> None:
    """A connection reset is a transport error: retried, and it passes the limiter again."""
    await _retried_then_final(tmp_path, "reset", "transport")


@pytest.mark.slow
async def test_timeout_retried(tmp_path: Path) -> None:
    """A request that times out is retried."""
    await _retried_then_final(tmp_path, "timeout", "transport")


async def test_payload_write_failure_keeps_order_pending_then_recovers(tmp_path: Path) -> None:
    """When the payload cannot be written (here: output_dir replaced by a file), the order is
    not finished and no event is sent; once writing works again it completes normally."""
    import shutil

    async with running_simulator(sim_opts(complete_after=0)) as rs:
        settings = settings_for(tmp_path, rs.base_url)
        out = tmp_path / "orders"
        async with running_daemon(settings) as d:
            shutil.rmtree(out)
            out.write_text("not a directory")
            await d.add_orders(["O-DISK"])

            async def failed_once() -> bool:
                rows = await store_of(d).get_orders(["O-DISK"])
                return bool(rows and rows[0].last_error)

            await until(failed_once, *changes_of(d))
            (row,) = await store_of(d).get_orders(["O-DISK"])
            assert row.state == "pending"
            # the directory is named: one deleted or unmounted under a running daemon was not
            assert row.last_error == f"cannot write payload in {out}: Not a directory"
            assert await store_of(d).get_event("O-DISK") is None
            out.unlink()
            out.mkdir(mode=0o700)
            await until(lambda: all_ended(d, ["O-DISK"]), *changes_of(d), timeout=30)
        assert json.loads((out / "O-DISK.json").read_bytes()) == rs.sim.payload("O-DISK")


async def test_a_long_write_failure_streak_keeps_being_retried(tmp_path: Path) -> None:
    """After days of failed writes the streak is large; its back-off must not overflow (2.0**1024
    raised OverflowError, which killed the worker and left the order leased to nobody)."""
    import shutil

    async with running_simulator(sim_opts(complete_after=0)) as rs:
        settings = settings_for(tmp_path, rs.base_url, polling={"initial_delay": "1h"})
        out = tmp_path / "orders"
        async with running_daemon(settings) as d:
            shutil.rmtree(out)
            out.write_text("not a directory")
            await d.add_orders(["O-DAYS"])
            db = sqlite3.connect(tmp_path / "state" / "orderwatch.sqlite3")
            with db:
                db.execute("UPDATE orders SET error_streak = 1500, next_poll_at = 0")
            db.close()

            async def failed() -> bool:
                rows = await store_of(d).get_orders(["O-DAYS"])
                return bool(rows and rows[0].last_error)

            await until(failed, *changes_of(d), timeout=5)
            (row,) = await store_of(d).get_orders(["O-DAYS"])
        assert row.state == "pending" and row.error_streak == 1501


async def test_a_final_body_with_a_lone_surrogate_still_ends_the_order(tmp_path: Path) -> None:
    """Valid JSON whose string was cut inside a UTF-16 pair ("\\ud83c") parses to text that has
    no UTF-8 form. The event is written with ASCII escapes instead of failing to build (which
    left the order polled again at every lease's end, never final, never delivered)."""
    from aiohttp import web

    from orderwatch.delivery.events import committed_payload
    from orderwatch.devtools.receiver import Receiver, running_receiver

    body = b'{"id":"O-SUR","status":"COMPLETED","description":"gift \\ud83c","items":[]}'

    async def order(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v2/order/{id}", order)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}/v2"
    receiver = Receiver(SECRET)
    try:
        async with running_receiver(receiver) as url:
            hooks = [{"url": url, "secret": SECRET}]
            settings = settings_for(tmp_path, base, webhooks=hooks)
            async with running_daemon(settings) as d:
                await d.add_orders(["O-SUR"])
                await until(lambda: all_ended(d, ["O-SUR"]), *changes_of(d))

                async def delivered() -> bool:
                    return receiver.attempts == 1

                await until(delivered, receiver.changed)
                event = await store_of(d).get_event("O-SUR")
    finally:
        await runner.cleanup()
    assert event is not None
    assert json.loads(event.body)["data"] == json.loads(body)
    assert json.loads(committed_payload(event) or b"") == json.loads(body)
    assert json.loads((tmp_path / "orders" / "O-SUR.json").read_bytes()) == json.loads(body)


@pytest.mark.slow
async def test_an_order_due_soon_is_polled_on_time_while_it_is_leased(tmp_path: Path) -> None:
    """One order polled every 200 ms: while it is leased the store says "nothing due before
    the lease ends", so its sooner reschedule must wake the scheduler (it slept its full
    idle second: gaps alternated 0.2 s and 1.0 s)."""
    async with running_simulator(sim_opts(complete_after=3600.0)) as rs:
        polling = {"max_interval": "200ms", "initial_delay": "200ms", "backoff_factor": 1}
        settings = settings_for(tmp_path, rs.base_url, polling={**polling, "jitter": 0})
        async with running_daemon(settings) as d:
            await d.add_orders(["O-CADENCE"])

            async def polled_enough() -> bool:
                return len(rs.sim.arrivals) >= 12

            await until(polled_enough, rs.sim.changed, timeout=20)
        times = sorted(rs.sim.arrivals)
    gaps = sorted(b - a for a, b in itertools.pairwise(times))
    assert gaps[len(gaps) * 3 // 4] < 0.6, gaps  # most gaps are the 200 ms asked for


async def test_polling_goes_on_after_the_wall_clock_steps_back(tmp_path: Path) -> None:
    """Schedules are wall-clock times: after a step back of an hour (NTP fixing a wrong RTC,
    `date -s`) every pending order looked due an hour later and polling stopped for that hour.
    The scheduler sees the step and pulls what lies beyond any schedule it can make to now."""
    offset = [0.0]

    def wall() -> float:
        return time.time() + offset[0]

    async with running_simulator(sim_opts(complete_after=3600.0)) as rs:
        polling = {"max_interval": "200ms", "initial_delay": "200ms", "backoff_factor": 1}
        settings = settings_for(tmp_path, rs.base_url, polling=polling)
        async with running_daemon(settings, wall=wall) as d:
            await d.add_orders(["O-CLOCK"])

            async def polled(n: int) -> bool:
                return len(rs.sim.arrivals) >= n

            await until(lambda: polled(2), rs.sim.changed)
            offset[0] = -3600.0
            seen = len(rs.sim.arrivals)
            await until(lambda: polled(seen + 3), rs.sim.changed, timeout=10)


@pytest.mark.slow
async def test_a_webhook_retry_is_not_delayed_by_a_clock_step_back(tmp_path: Path) -> None:
    """A retry is due at a wall-clock time too: after a step back of an hour, a retry due in
    2 s came an hour late. The step moves waiting retries back by as much."""
    from orderwatch.devtools.receiver import Receiver, running_receiver

    offset = [0.0]

    def wall() -> float:
        return time.time() + offset[0]

    receiver = Receiver(SECRET, fail_first=1)
    async with (
        running_simulator(sim_opts(complete_after=0.0)) as rs,
        running_receiver(receiver) as url,
    ):
        hooks = [{"url": url, "secret": SECRET, "retry_schedule": ["2s"]}]
        settings = settings_for(tmp_path, rs.base_url, webhooks=hooks)
        async with running_daemon(settings, wall=wall) as d:
            await d.add_orders(["O-RETRY"])

            async def attempted(n: int) -> bool:
                return receiver.attempts >= n

            await until(lambda: attempted(1), receiver.changed)
            offset[0] = -3600.0
            await until(lambda: attempted(2), receiver.changed, timeout=10)


async def test_idle_daemon_sees_orders_another_process_adds(tmp_path: Path) -> None:
    """Idle (its only order due in an hour), the daemon asks the store only when the next
    order is due; an order another process adds, due now, is still polled within a second or
    so, with the waiting one left alone."""

    async with running_simulator(sim_opts(complete_after=0.0)) as rs:
        settings = settings_for(tmp_path, rs.base_url, polling={"initial_delay": "1h"})
        async with running_daemon(settings) as d:
            await d.add_orders(["O-LATER"])
            await asyncio.sleep(1.5)  # a pass or two of the idle loop
            other = await SqliteStore.open(tmp_path / "state")  # as `orderwatch add` does
            try:
                await other.add_orders(["O-NOW"], time.time(), time.time())
            finally:
                await other.close()
            await until(
                lambda: all_ended(d, ["O-NOW"]), *changes_of(d), timeout=4
            )  # 1 s bound, with slack
            assert await states(d, ["O-NOW", "O-LATER"]) == {
                "O-NOW": "final",
                "O-LATER": "pending",
            }
            (later,) = await store_of(d).get_orders(["O-LATER"])
            assert later.polls == 0


@pytest.mark.slow
async def test_a_store_that_fails_is_retried_once_a_second_not_in_a_loop(tmp_path: Path) -> None:
    """With the state database unusable, the idle scheduler reports it and tries again after
    its one-second wait, instead of spinning on the error."""
    from structlog.testing import capture_logs

    async with running_simulator(sim_opts()) as rs:
        settings = settings_for(tmp_path, rs.base_url, polling={"initial_delay": "1h"})
        async with running_daemon(settings) as d:
            store = d.store
            assert isinstance(store, SqliteStore)
            await asyncio.sleep(0.2)
            gone = sqlite3.connect(":memory:")
            gone.close()
            # every call now fails with sqlite3.Error, as on a lost disk
            with capture_logs() as logs, store.connection_replaced(gone):
                await asyncio.sleep(2.5)
            errors = [e for e in logs if e["event"] == "store.unavailable"]
            assert 1 <= len(errors) <= 8, len(errors)


async def _claims_fail_while_work_looks_due(
    store: Store, claim: str, next_due: str, seconds: float = 3.5
) -> list[dict[str, object]]:
    """For `seconds`, every `claim` call fails as on a full disk or a read-only database, while
    `next_due` (a read, which still works there) says work is due now. The logs meanwhile."""
    from structlog.testing import capture_logs

    from orderwatch.core.errors import StoreError

    async def refused(*_a: object, **_k: object) -> list[object]:
        raise StoreError("state database: cannot execute UPDATE in a read-only transaction")

    async def due_now(*_a: object) -> float:
        return 0.0

    real = getattr(store, claim), getattr(store, next_due)
    with capture_logs() as logs:
        setattr(store, claim, refused)
        setattr(store, next_due, due_now)
        try:
            await asyncio.sleep(seconds)
        finally:
            setattr(store, claim, real[0])
            setattr(store, next_due, real[1])
    return [dict(e) for e in logs]


@pytest.mark.slow
async def test_a_store_that_reads_but_cannot_write_is_retried_with_backoff(
    tmp_path: Path,
) -> None:
    """On a full disk reads still work and show an order due, but every claim fails: the
    dispatcher waits longer after each failure (1 s, 2 s, ...) instead of asking again at once."""

    async with running_simulator(sim_opts()) as rs:
        settings = settings_for(tmp_path, rs.base_url, polling={"initial_delay": "1h"})
        async with running_daemon(settings) as d:
            store = store_of(d)
            await asyncio.sleep(0.2)

            logs = await _claims_fail_while_work_looks_due(store, "claim_due", "next_due_at")
            errors = [e for e in logs if e["event"] == "store.unavailable"]
            assert 2 <= len(errors) <= 3, len(errors)  # at 0, 1 and 3 s
            assert [e.get("retry_in_s") for e in errors[:2]] == [1.0, 2.0]
            assert (
                d.health is not None and d.health.making_progress()
            )  # the watchdog still sees the scheduler pass


async def test_an_order_that_expires_leaves_no_file_a_crash_left(tmp_path: Path) -> None:
    """A final's payload file is written before its commit. Killed between the two, the order
    is polled again; if it then expires (the API failing past give_up_after), the crashed
    attempt's file, with live payout links, stayed beside an order.expired event (crash
    audit). An order that ends without a payload removes such a file."""
    from orderwatch.delivery.payload_files import write_payload

    async with running_simulator(sim_opts(complete_after=3600.0)) as rs:
        settings = settings_for(tmp_path, rs.base_url, polling={"give_up_after": "1s"})
        left = b'{"id": "O-STRAY", "status": "COMPLETED", "items": []}'
        async with running_daemon(settings) as d:
            write_payload(settings.output_dir, "O-STRAY", left)  # what the crash left
            await d.add_orders(["O-STRAY"])
            await until(lambda: all_ended(d, ["O-STRAY"]), *changes_of(d))
            assert await states(d, ["O-STRAY"]) == {"O-STRAY": "expired"}
    assert not (settings.output_dir / "O-STRAY.json").exists()


@pytest.mark.slow
async def test_a_stop_while_the_store_hangs_ends_in_bounded_time(tmp_path: Path) -> None:
    """SIGTERM while every write waits out the store's own timeout (another process holds
    the SQLite write lock; PostgreSQL down is the same with its pool's timeout): the
    daemon used to hand back its prefetched claims one by one, each waiting that timeout
    (minutes), then fail its exit on the lease release. Giving work back is an
    optimisation (leases expire): it gets a short bound, and the stop stays clean."""
    from orderwatch.ops.daemon import Daemon

    async with running_simulator(sim_opts(complete_after=3600.0)) as rs:
        settings = settings_for(
            tmp_path, rs.base_url, rate_limit={"requests_per_second": 5, "max_concurrency": 4}
        )
        d = Daemon(settings)
        stop = asyncio.Event()
        task = asyncio.create_task(d.run(stop))
        await d.ready.wait()
        await d.add_orders([f"O-HANG{i:03d}" for i in range(200)])
        await until(lambda: _polled(rs, 3), rs.sim.changed)
        blocker = sqlite3.connect(tmp_path / "state" / SQLITE_NAME, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # every write now waits, then fails
        try:
            t0 = time.monotonic()
            stop.set()
            await asyncio.wait_for(task, 60)  # raises if the stop failed
            took = time.monotonic() - t0
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
    assert took < settings.shutdown_timeout_s + 5, f"the stop took {took:.1f}s"


async def _polled(rs: object, n: int) -> bool:
    return len(rs.sim.arrivals) >= n  # type: ignore[attr-defined]


@pytest.mark.slow
async def test_a_sink_whose_claims_fail_backs_off(tmp_path: Path) -> None:
    """The same for deliveries: reads say a retry is due, every claim fails (a read-only
    database, a full disk). Each sink waits longer after each failure; it asked again at once,
    355 times a second."""

    hooks = [{"url": "http://127.0.0.1:9/hook", "secret": SECRET}]
    async with running_simulator(sim_opts()) as rs:
        settings = settings_for(tmp_path, rs.base_url, webhooks=hooks)
        async with running_daemon(settings) as d:
            store = store_of(d)
            await asyncio.sleep(0.2)

            logs = await _claims_fail_while_work_looks_due(
                store, "claim_deliveries", "next_delivery_due_at"
            )
            errors = [e for e in logs if e["event"] == "store.unavailable" and "sink" in e]
            assert 2 <= len(errors) <= 3, len(errors)  # at 0, 1 and 3 s
            assert [e.get("retry_in_s") for e in errors[:2]] == [1.0, 2.0]
