"""Running orderwatch inside an asyncio application, with an async callback as the sink."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from orderwatch import Watcher
from orderwatch.core.errors import UsageError
from orderwatch.devtools.simulator import SimOptions, running_simulator

from harness import API_KEY, changes_of, config_dict, until


async def test_watcher_with_callback(tmp_path: Path) -> None:
    """Watcher tracks added orders and awaits the callback once per final event, with the
    event id, type and the API's payload."""
    got: list[dict[str, Any]] = []
    seen = asyncio.Event()

    async def on_final(event: dict[str, Any]) -> None:
        got.append(event)
        seen.set()

    async with running_simulator(SimOptions(api_key=API_KEY, complete_after=0.2)) as rs:
        async with Watcher(config_dict(tmp_path, rs.base_url), callbacks=[on_final]) as w:
            assert await w.add(["O-EMB"]) == 1
            with pytest.raises(UsageError):
                await w.add(["../x"])
            await asyncio.wait_for(seen.wait(), 20)

            async def final() -> bool:
                return (await w.status(["O-EMB"]))[0].state == "final"

            await until(final, *changes_of(w.daemon))
        (event,) = got
        assert event["id"] == "evt_completed_O-EMB" and event["type"] == "order.completed"
        assert event["data"] == rs.sim.payload("O-EMB")


async def test_a_watcher_that_is_not_running_says_so(tmp_path: Path) -> None:
    """add and status before `async with` or after it ended raised an AssertionError or
    "RuntimeError: cannot schedule new futures after shutdown"; now a UsageError that says
    what is wrong."""
    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        w = Watcher(config_dict(tmp_path, rs.base_url))
        with pytest.raises(UsageError, match="not running"):
            await w.add(["O-E1"])
        async with w:
            assert await w.add(["O-E1"]) == 1
        for call in (w.add(["O-E2"]), w.status(["O-E1"])):
            with pytest.raises(UsageError, match="not running"):
                await call


async def test_a_start_that_is_cancelled_leaves_no_daemon_behind(tmp_path: Path) -> None:
    """An application that bounds the Watcher's start (asyncio.timeout) and is cancelled
    left the daemon task running, holding the state lock: polling and delivering with no
    way to stop it, and every retry refused with StateLockedError."""
    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        cfg = config_dict(tmp_path, rs.base_url)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.001):
                await Watcher(cfg).__aenter__()
        assert [t for t in asyncio.all_tasks() if t.get_name() == "orderwatch"] == []
        async with Watcher(cfg) as again:
            assert await again.add(["O-1"]) == 1
