"""Signals that come before the event loop handles them (ops/early_signals.py): a SIGHUP
or SIGTERM right after `orderwatch run` starts."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from orderwatch.devtools.simulator import SimOptions, running_simulator

from harness import (
    API_KEY,
    spawn,
    write_config,
)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM], ids=["hup", "term"])
async def test_a_signal_during_start_up_is_not_fatal(tmp_path: Path, sig: signal.Signals) -> None:
    """0.2 s after `orderwatch run` starts, its handlers were not installed yet (they came with
    the event loop, after imports and the config), so a SIGHUP killed it and a SIGTERM was a
    kill, not a clean stop (crash audit: 24 daemons of a torture run). A SIGHUP then is applied
    once the daemon is ready; a SIGTERM stops it cleanly."""
    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        cfg = write_config(tmp_path, rs.base_url)
        proc = await spawn("run", "-c", str(cfg), stderr=asyncio.subprocess.DEVNULL)
        try:
            await asyncio.sleep(0.2)
            proc.send_signal(sig)
            if sig == signal.SIGHUP:
                await asyncio.sleep(1.5)
                assert proc.returncode is None, f"died of a start-up SIGHUP ({proc.returncode})"
                proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
