"""The stop (SIGTERM): what it shows from outside while it drains, and SIGHUPs up to its end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path

import pytest

from orderwatch.devtools.receiver import Receiver, running_receiver
from orderwatch.devtools.simulator import SimOptions, running_simulator
from orderwatch.ops.daemon import Daemon

from harness import (
    API_KEY,
    SECRET,
    RecordingNotifier,
    free_port,
    http,
    settings_for,
    spawn,
    until,
    write_config,
)


@pytest.mark.slow
async def test_draining_is_visible_from_outside(tmp_path: Path) -> None:
    """From SIGTERM on: STOPPING=1 at once (not after the drain), /readyz 503 "stopping",
    POST /orders refused with 503, and a SIGHUP ignored."""
    port = free_port()
    hanging = Receiver(SECRET)
    hanging.hang = True
    async with (
        running_simulator(SimOptions(api_key=API_KEY, complete_after=0)) as rs,
        running_receiver(hanging) as url,
    ):
        settings = settings_for(
            tmp_path,
            rs.base_url,
            admin={"listen": f"127.0.0.1:{port}"},
            webhooks=[{"url": url, "secret": SECRET}],
            shutdown_timeout="3s",
        )
        notifier = RecordingNotifier()
        daemon = Daemon(settings, reload=lambda: settings, notifier=notifier)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        await daemon.ready.wait()
        await daemon.add_orders(["O-DRAIN"])

        async def hangs() -> bool:  # a delivery in flight that never ends: a long drain
            return hanging.attempts >= 1

        await until(hangs, hanging.changed)
        stop.set()

        async def told() -> bool:
            return "STOPPING=1" in notifier.sent

        await until(told, notifier.changed)  # at once, not after the drain
        assert not task.done()
        assert daemon.readiness() == (False, "stopping")
        ready = await http("GET", f"http://127.0.0.1:{port}/readyz")
        posted = await http("POST", f"http://127.0.0.1:{port}/orders", json={"ids": ["O-2"]})
        assert daemon.reload() is False
        await task
    assert ready[0] == 503 and json.loads(ready[1])["reason"] == "stopping"
    assert posted[0] == 503
    assert notifier.sent.count("RELOADING=1") == 0


@pytest.mark.slow
async def test_sighups_during_the_stop_do_not_kill_it(tmp_path: Path) -> None:
    """Reloads sent while the daemon stops are ignored, up to its last moment: once the
    loop's handlers were removed a SIGHUP had its default action again, and killed the
    process (exit -1 in 8 of 8 runs of the crash audit)."""
    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        cfg = write_config(tmp_path, rs.base_url)
        proc = await spawn("run", "-c", str(cfg), stderr=asyncio.subprocess.DEVNULL)
        try:
            await asyncio.sleep(1.5)  # started
            proc.send_signal(signal.SIGTERM)
            while proc.returncode is None:
                # os.kill, not proc.send_signal: Popen.send_signal polls the child first, and
                # a poll that reaps it leaves asyncio's watcher to report exit code 255.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGHUP)
                await asyncio.sleep(0.002)
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
