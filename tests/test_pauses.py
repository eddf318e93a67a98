"""Pauses that apply to all polling: 429 back-off and bad API keys, seen from the server."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from orderwatch.devtools.simulator import Faults, SimOptions, running_simulator
from orderwatch.polling.client import RunaClient
from orderwatch.polling.gate import Gate
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


@pytest.mark.slow
async def test_429_pauses_everyone_and_honours_retry_after(tmp_path: Path) -> None:
    """After a 429 with Retry-After: 6 no request reaches the server for 6 s; then it resumes."""
    opts = SimOptions(api_key=API_KEY, complete_after=0, faults=Faults(retry_after="6"))
    async with running_simulator(opts) as rs:
        rs.sim.script("429")
        settings = settings_for(tmp_path, rs.base_url)
        ids = [f"O-P{i}" for i in range(20)]
        async with running_daemon(settings) as d:
            await d.add_orders(ids)

            async def done() -> bool:
                return (await d.store.counts())["final"] == len(ids)  # type: ignore[union-attr]

            await until(done, *changes_of(d), timeout=30)
        first, *rest = sorted(rs.sim.arrivals)
        # requests already in flight when the 429 came back may land just after it
        after = [t for t in rest if t - first > 0.5]
        assert after and min(after) - first >= 6.0
        assert d.metrics.registry.get_sample_value("orderwatch_api_rate_limited_total") == 1


@pytest.mark.slow
async def test_bad_key_pauses_probes_and_recovers(tmp_path: Path) -> None:
    """401s pause polling (not ready), probe one request at a time, never fail an order,
    and resume when the key works again."""
    opts = SimOptions(api_key=API_KEY, complete_after=0, faults=Faults(bad_key=True))
    async with running_simulator(opts) as rs:
        settings = settings_for(tmp_path, rs.base_url, polling={"max_interval": "300ms"})
        ids = [f"O-K{i}" for i in range(30)]
        async with running_daemon(settings) as d:
            await d.add_orders(ids)

            async def probing() -> bool:
                return len(rs.sim.arrivals) >= 12

            await until(probing, rs.sim.changed, timeout=10)
            assert d.readiness() == (False, "the Runa API rejects the API key (401/403); probing")
            rows = await d.store.get_orders(ids)  # type: ignore[union-attr]
            assert all(r.state == "pending" and r.error_streak == 0 for r in rows)
            times = sorted(rs.sim.arrivals)
            # requests already sent when the first 401 came back land within a few ms of it;
            # after that: probes only, one at a time, backed off
            probes = [t for t in times if t - times[0] > 0.1]
            gaps = [b - a for a, b in itertools.pairwise(probes)]
            assert len(probes) >= 2 and min(gaps) >= 0.25
            assert len(times) - len(probes) <= settings.rate_limit.max_concurrency
            rs.sim.set_faults(Faults())

            async def done() -> bool:
                return (await d.store.counts())["final"] == len(ids)  # type: ignore[union-attr]

            await until(done, *changes_of(d), timeout=20)
            assert d.readiness() == (True, "ok")


@pytest.mark.slow
async def test_a_retired_api_version_pauses_polling_and_fails_no_order(tmp_path: Path) -> None:
    """410 version_removed for every order: polling pauses and probes, the daemon says
    why it is not ready, and no order is failed or expired. It resumes when the API
    answers again (here the simulator stops refusing; in life, a restart with a new
    api_version)."""
    opts = SimOptions(api_key=API_KEY, complete_after=0, faults=Faults(version_removed=True))
    async with running_simulator(opts) as rs:
        settings = settings_for(
            tmp_path, rs.base_url, polling={"max_interval": "300ms", "give_up_after": "2s"}
        )
        ids = [f"O-V{i}" for i in range(10)]
        with capture_logs() as logs:
            async with running_daemon(settings) as d:
                await d.add_orders(ids)

                async def probing() -> bool:
                    return len(rs.sim.arrivals) >= 8

                await until(probing, rs.sim.changed, timeout=10)
                await asyncio.sleep(2.5)  # past give_up_after: still nothing may expire
                ready, reason = d.readiness()
                assert not ready and "api_version" in reason
                rows = await d.store.get_orders(ids)  # type: ignore[union-attr]
                assert all(r.state == "pending" for r in rows)
                assert len(rs.sim.arrivals) <= settings.rate_limit.max_concurrency + 15
                rs.sim.set_faults(Faults())

                async def done() -> bool:
                    return (await d.store.counts())["final"] == len(ids)  # type: ignore[union-attr]

                await until(done, *changes_of(d), timeout=20)
                assert d.readiness() == (True, "ok")
    (refused,) = [e for e in logs if e["event"] == "api.refused"]
    assert refused["reason"] == "http 410 version_removed"


async def test_a_claim_whose_lease_ran_short_in_a_pause_is_not_polled(tmp_path: Path) -> None:
    """A worker that waited out a pause at the gate re-checks its lease before sending, even
    when the limiter then has a send free at once: too close to the lease's end, no GET."""
    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        settings = settings_for(tmp_path, rs.base_url)
        wall = FakeClock()
        store = await SqliteStore.open(tmp_path / "state", daemon=True, now=wall())
        gate = Gate(max_interval_s=1.0)
        async with RunaClient(
            rs.base_url, API_KEY, api_version="2024-02-05", timeout_s=2, max_connections=1
        ) as client:
            poller = one_worker(
                store,
                client,
                polling=settings.polling,
                output_dir=tmp_path / "orders",
                wall=wall,
                gate=gate,
                start_full=False,
            )
            await store.add_orders(["O-L1"], wall(), wall())
            (claim,) = await store.claim_due(wall(), 1, "t", 5.0)  # 2.5 s of it usable
            gate.paused_until = time.monotonic() + 0.3

            async def time_passes() -> None:
                await asyncio.sleep(0.1)
                wall.now += 3.0  # the pause outlasted what was left of the lease

            await asyncio.gather(poller.poll_one(claim), time_passes())
        await store.close()
    assert len(rs.sim.arrivals) == 0


@pytest.mark.slow
async def test_the_scheduler_waits_quietly_while_the_key_is_rejected(tmp_path: Path) -> None:
    """While auth-paused, a probe holds the one claim there is; other orders stay due. The
    scheduler saw them due, waited 1 ms and asked the store again: hundreds of queries a
    second for as long as the key was wrong. It now looks once a second."""
    async with running_simulator(SimOptions(faults=Faults(bad_key=True))) as rs:
        settings = settings_for(tmp_path, rs.base_url, polling={"max_interval": "5m"})
        async with running_daemon(settings) as d:
            store = d.store
            assert store is not None
            await d.add_orders([f"O-Q{i}" for i in range(20)])

            async def auth_failed() -> bool:
                return d.gate.auth_failed

            await until(auth_failed, d.gate.changed)
            calls = 0
            real = store.next_due_at

            async def counted() -> float | None:
                nonlocal calls
                calls += 1
                return await real()

            store.next_due_at = counted  # type: ignore[method-assign]
            await asyncio.sleep(2.0)
    assert calls <= 6, calls
