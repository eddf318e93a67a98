"""The 429 and 401/403 pauses outlive the process (polling/pause_memory.py)."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from bisect import bisect_right
from pathlib import Path

import pytest

from orderwatch.devtools.simulator import Faults, SimOptions, running_simulator
from orderwatch.polling.gate import MIN_429_PAUSE_S
from orderwatch.store.sqlite import SqliteStore

from harness import API_KEY, settings_for, spawn, until, write_config


@pytest.mark.slow
async def test_a_429_pause_survives_kill_and_restart(tmp_path: Path) -> None:
    """A daemon SIGKILLed within seconds of a 429 and restarted at once sent again after
    about a second (183 requests 0.3-4.9 s after a 429 in a chaos run). Server-side: no
    request may arrive within 5 s after any 429, across eight kill-and-restart rounds."""
    opts = SimOptions(api_key=API_KEY, complete_after=3600, faults=Faults(rate_429=0.2), seed=3)
    rng = random.Random(11)
    async with running_simulator(opts) as rs:
        cfg = write_config(
            tmp_path,
            rs.base_url,
            rate_limit={"requests_per_second": 20, "max_concurrency": 1},
            polling={"initial_delay": "0s", "max_interval": "300ms"},
        )
        add = await spawn("add", "-c", str(cfg), *[f"O-CHAOS{i:03d}" for i in range(30)])
        assert await add.wait() == 0
        sim = rs.sim
        for _ in range(8):
            seen = len(sim.rate_limited_at)
            child = await spawn("run", "-c", str(cfg), stderr=asyncio.subprocess.DEVNULL)

            async def limited(seen: int = seen) -> bool:
                return len(sim.rate_limited_at) > seen

            await until(limited, sim.changed, timeout=60)
            await asyncio.sleep(rng.uniform(0.0, 3.0))  # the kill lands somewhere in the pause
            child.send_signal(signal.SIGKILL)
            await child.wait()
        child = await spawn("run", "-c", str(cfg), stderr=asyncio.subprocess.DEVNULL)
        await asyncio.sleep(MIN_429_PAUSE_S + 1)  # the last pause runs out under watch
        child.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(child.wait(), 15) == 0
    arrivals = sorted(sim.arrivals)
    assert len(sim.rate_limited_at) >= 8
    too_soon = []
    for t in sim.rate_limited_at:
        i = bisect_right(arrivals, t)  # the first arrival after this 429's
        if i < len(arrivals) and arrivals[i] - t < MIN_429_PAUSE_S:
            too_soon.append(round(arrivals[i] - t, 3))
    assert too_soon == []


async def test_an_auth_pause_resumes_for_the_same_key_only(tmp_path: Path) -> None:
    """A restart while the key is refused starts in probe mode (one request at a time, not
    ready); a restart with another key starts polling as usual."""
    from harness import running_daemon

    async with running_simulator(SimOptions(faults=Faults(bad_key=True))) as rs:
        settings = settings_for(tmp_path, rs.base_url)
        store = await SqliteStore.open(tmp_path / "state")
        try:
            await store.add_orders(["O-AUTH1"], time.time(), time.time())
        finally:
            await store.close()
        async with running_daemon(settings) as d:

            async def refused() -> bool:
                return d.gate.auth_failed

            await until(refused, d.gate.changed)
        rs.sim.set_faults(Faults())  # the key works again, but nobody knows it yet
        async with running_daemon(settings) as d:
            assert d.gate.auth_failed  # before any answer: resumed from the store
            assert d.readiness()[0] is False

            async def recovered() -> bool:
                return not d.gate.auth_failed

            await until(recovered, d.gate.changed)  # the probe goes out and clears it
        rs.sim.set_faults(Faults(bad_key=True))
        async with running_daemon(settings) as d:
            await until(refused, d.gate.changed)
        other = settings_for(tmp_path, rs.base_url, runa={"api_key": "xx.another-key-987654321"})
        async with running_daemon(other) as d:
            assert not d.gate.auth_failed
