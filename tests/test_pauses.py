"""Pauses that apply to all polling: 429 back-off and bad API keys, seen from the server."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from orderwatch.simulator import Faults, SimOptions, running_simulator

from harness import API_KEY, running_daemon, settings_for, until


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

            await until(done, timeout=30)
        first, *rest = sorted(rs.sim.arrivals)
        # requests already in flight when the 429 came back may land just after it
        after = [t for t in rest if t - first > 0.5]
        assert after and min(after) - first >= 6.0
        assert d.metrics.rate_limited._value.get() == 1


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

            await until(probing, timeout=10)
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

            await until(done, timeout=20)
            assert d.readiness() == (True, "ok")
