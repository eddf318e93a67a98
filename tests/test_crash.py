"""SIGKILL mid-flight, again and again: no accepted order is lost, no file is partial or wrong."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from orderwatch.devtools.simulator import SimOptions, running_simulator
from orderwatch.store.sqlite import SqliteStore

from harness import API_KEY, spawn, until, write_config


def check_files(out: Path, payload_of: object) -> int:
    """Every payload file present parses and equals what the API served; returns the count."""
    files = list(out.glob("*.json"))
    for f in files:
        assert json.loads(f.read_bytes()) == payload_of(f.stem)  # type: ignore[operator]
    return len(files)


@pytest.mark.slow
async def test_sigkill_restart_loop_loses_nothing(tmp_path: Path) -> None:
    """Five SIGKILLs while polling and finishing; after a clean run every order is final."""
    opts = SimOptions(api_key=API_KEY, complete_after=1.0, fail_ratio=0.3, seed=7)
    async with running_simulator(opts) as rs:
        cfg = write_config(
            tmp_path,
            rs.base_url,
            rate_limit={"requests_per_second": 150, "max_concurrency": 8},
            polling={"initial_delay": "0s", "max_interval": "300ms"},
        )
        ids = [f"O-CRASH{i:04d}" for i in range(200)]
        add = await spawn("add", "-c", str(cfg), *ids)
        assert await add.wait() == 0
        out = tmp_path / "orders"
        for _ in range(5):
            seen = len(rs.sim.arrivals)
            child = await spawn("run", "-c", str(cfg), stderr=asyncio.subprocess.DEVNULL)

            async def progressed(seen: int = seen) -> bool:
                return len(rs.sim.arrivals) >= seen + 60

            await until(progressed, rs.sim.changed, timeout=30)
            child.send_signal(signal.SIGKILL)
            await child.wait()
            check_files(out, rs.sim.payload)

        child = await spawn("run", "-c", str(cfg), stderr=asyncio.subprocess.DEVNULL)
        store = await SqliteStore.open(tmp_path / "state")
        try:

            async def all_done() -> bool:
                return (await store.counts())["pending"] == 0

            await until(all_done, timeout=60)
            child.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(child.wait(), 15) == 0
            rows = await store.get_orders(ids)
            events = [await store.get_event(i) for i in ids]
        finally:
            await store.close()
        assert len(rows) == len(ids) and all(r.state == "final" for r in rows)
        assert all(e is not None for e in events)
        assert check_files(out, rs.sim.payload) == len(ids)
        assert not list(out.glob(".tmp-*"))
        for r, e in zip(rows, events, strict=True):
            assert e is not None
            assert json.loads(e.body)["data"] == rs.sim.payload(r.order_id)


@pytest.mark.slow
async def test_sigkill_during_delivery_burst_loses_no_event(tmp_path: Path) -> None:
    """SIGKILL while webhooks go out, three times: afterwards every order's event has been
    delivered at least once, always under its one stable id and with identical bytes."""
    from orderwatch.devtools.receiver import Receiver, running_receiver

    from harness import SECRET

    receiver = Receiver(SECRET, delay_s=0.02)  # slow enough that kills land mid-burst
    opts = SimOptions(api_key=API_KEY, complete_after=0)
    ids = [f"O-HOOK{i:03d}" for i in range(150)]
    async with running_simulator(opts) as rs, running_receiver(receiver) as url:
        cfg = write_config(
            tmp_path,
            rs.base_url,
            webhooks=[
                {
                    "url": url,
                    "secret": SECRET,
                    "retry_schedule": ["100ms"] * 5,
                    "max_concurrency": 4,
                }
            ],
        )
        assert await (await spawn("add", "-c", str(cfg), *ids)).wait() == 0
        for _ in range(3):
            seen = len(receiver.events)
            child = await spawn("run", "-c", str(cfg), stderr=asyncio.subprocess.DEVNULL)

            async def progressed(seen: int = seen) -> bool:
                return len(receiver.events) >= seen + 20

            await until(progressed, receiver.changed, timeout=30)
            child.send_signal(signal.SIGKILL)
            await child.wait()
        child = await spawn("run", "-c", str(cfg), stderr=asyncio.subprocess.DEVNULL)

        async def all_heard() -> bool:
            return {e.order_id for e in receiver.events} == set(ids)

        await until(all_heard, receiver.changed, timeout=60)
        child.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(child.wait(), 15) == 0
    by_order: dict[str, set[tuple[str, bytes]]] = {}
    for e in receiver.events:
        assert e.verified
        by_order.setdefault(e.order_id, set()).add((e.event_id, e.body))
    assert set(by_order) == set(ids)
    assert all(len(v) == 1 for v in by_order.values())  # one id, one body per order
