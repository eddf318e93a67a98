"""The rate ceiling as the server sees it, with hundreds of orders due at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from orderwatch.devtools.simulator import SimOptions, running_simulator

from harness import API_KEY, running_daemon, settings_for, until


@pytest.mark.slow
@pytest.mark.parametrize(("rate", "orders"), [(10, 300), (200, 600)])
@pytest.mark.serial
async def test_server_never_sees_more_than_the_limit(
    tmp_path: Path, rate: int, orders: int
) -> None:
    """At 10 and 200 requests/s configured, no 1-second window at the server holds more."""
    async with running_simulator(SimOptions(api_key=API_KEY, complete_after=3600)) as rs:
        settings = settings_for(
            tmp_path,
            rs.base_url,
            rate_limit={"requests_per_second": rate, "max_concurrency": 16},
            polling={"initial_delay": "0s", "max_interval": "50ms"},
        )
        async with running_daemon(settings) as d:
            await d.add_orders([f"O-RATE{i:05d}" for i in range(orders)])
            want = 3 * rate + 1  # three full seconds of saturated sending

            async def enough() -> bool:
                return len(rs.sim.arrivals) >= want

            await until(enough, rs.sim.changed, timeout=60)
        assert len(rs.sim.arrivals) >= want
        assert rs.sim.max_in_window(1.0) <= rate
