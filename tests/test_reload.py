"""Reloading the config (SIGHUP): what is applied live, what needs a restart, and a reload
that fails, comes during start-up or comes in a burst."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from orderwatch.core.pulse import Pulse
from orderwatch.devtools.simulator import Faults, SimOptions, running_simulator
from orderwatch.ops.daemon import Daemon

from harness import (
    API_KEY,
    RecordingNotifier,
    changes_of,
    config_dict,
    free_port,
    http,
    running_daemon,
    settings_for,
    spawn,
    states,
    until,
)


@pytest.mark.slow
async def test_sighup_with_broken_config_keeps_old_and_sigterm_exits_0(tmp_path: Path) -> None:
    """A broken config on SIGHUP is reported and the old one kept; a good one is applied.
    SIGTERM with requests in flight exits 0 within the shutdown deadline."""
    port = free_port()
    opts = SimOptions(api_key=API_KEY, complete_after=3600, faults=Faults(latency=1.5))
    async with running_simulator(opts) as rs:
        cfg_path = tmp_path / "ow.yaml"
        good = config_dict(
            tmp_path,
            rs.base_url,
            admin={"listen": f"127.0.0.1:{port}"},
            logging={"format": "json", "level": "info"},
        )
        cfg_path.write_text(yaml.safe_dump(good))
        assert (
            await (await spawn("add", "-c", str(cfg_path), *[f"O-S{i}" for i in range(20)])).wait()
            == 0
        )
        proc = await spawn("run", "-c", str(cfg_path), stderr=asyncio.subprocess.PIPE)
        lines: list[dict[str, object]] = []

        async def read_logs() -> None:
            assert proc.stderr is not None
            async for raw in proc.stderr:
                lines.append(json.loads(raw))

        reader = asyncio.create_task(read_logs())

        async def logged(event: str) -> bool:
            return any(e.get("event") == event for e in lines)

        await until(lambda: logged("daemon.ready"))
        cfg_path.write_text("runa: [this is: not valid\n")
        proc.send_signal(signal.SIGHUP)
        await until(lambda: logged("config.reload_rejected"))
        assert (await http("GET", f"http://127.0.0.1:{port}/healthz"))[0] == 200
        cfg_path.write_text(yaml.safe_dump({**good, "polling": {**good["polling"], "jitter": 0.2}}))
        proc.send_signal(signal.SIGHUP)
        await until(lambda: logged("config.reloaded"))

        async def in_flight() -> bool:
            return len(rs.sim.arrivals) >= 4  # the 1.5 s latency keeps them open

        await until(in_flight, rs.sim.changed)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 15)
        elapsed = time.monotonic() - t0
        await reader
    assert code == 0
    assert elapsed < 2.0 + 3.0  # shutdown_timeout (2 s) plus start-up slack of the exit path
    rejected = next(e for e in lines if e["event"] == "config.reload_rejected")
    assert "YAML syntax error" in json.dumps(rejected)


async def test_a_reload_during_start_up_is_applied_once_ready(tmp_path: Path) -> None:
    """SIGHUP while the state is still opening: no RELOADING=1/READY=1 before the daemon is
    ready (systemd would take it as started), and the new config is applied right after
    start-up. Here it fixes a rejected API key, which used to crash the reload (no client
    yet) and leave the old key in use until a restart."""
    async with running_simulator(SimOptions(api_key=API_KEY, complete_after=0)) as rs:
        bad = settings_for(tmp_path, rs.base_url, runa={"api_key": "xx.wrong-key"})
        good = settings_for(tmp_path, rs.base_url)
        notifier = RecordingNotifier()
        daemon = Daemon(bad, reload=lambda: good, notifier=notifier)
        assert daemon.reload() is False  # not started: kept for later
        assert notifier.sent == []
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        try:
            await daemon.ready.wait()
            await daemon.add_orders(["O-HUP"])

            async def final() -> bool:
                return (await states(daemon, ["O-HUP"])) == {"O-HUP": "final"}

            await until(final, *changes_of(daemon), timeout=10)
        finally:
            stop.set()
            await task
    assert notifier.sent[:3] == ["READY=1", "RELOADING=1", "READY=1"]


async def test_a_reload_names_every_change_it_cannot_apply(tmp_path: Path) -> None:
    """Changes a running daemon cannot take are listed in needs_restart (the log level, the
    lease and the runa section were applied silently by nobody); the back-off cap applies."""
    from structlog.testing import capture_logs

    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        old = settings_for(tmp_path, rs.base_url)
        new = settings_for(
            tmp_path,
            rs.base_url,
            logging={"level": "debug"},
            polling={"lease": "2m", "max_interval": "7s"},
            runa={"timeout": "3s"},
        )
        async with running_daemon(old, reload=lambda: new) as d:
            with capture_logs() as logs:
                assert d.reload()
            (reloaded,) = [e for e in logs if e["event"] == "config.reloaded"]
            assert reloaded["needs_restart"] == ["runa", "polling.lease", "logging"]
            assert d.gate.max_interval_s == 7
            # Still so at the next reload: it compared with the last reload's config, said
            # needs_restart None, and the operator took the change for applied.
            with capture_logs() as logs:
                assert d.reload()
            (reloaded,) = [e for e in logs if e["event"] == "config.reloaded"]
            assert reloaded["needs_restart"] == ["runa", "polling.lease", "logging"]


async def test_a_burst_of_reloads_reads_the_watchlists_at_most_twice(tmp_path: Path) -> None:
    """Each SIGHUP started a full re-read of every watchlist, all at once: 20 in a second
    over a 1,000,000-line file took polling from 49 to 2-4 GETs/s for over a minute. A
    reload during a re-read now asks for one more, once."""
    watchlist = tmp_path / "ids.txt"
    watchlist.write_text("O-1\n")
    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        s = settings_for(tmp_path, rs.base_url, watchlists=[str(watchlist)])
        async with running_daemon(s, reload=lambda: s) as d:
            forced = forced_ended = 0
            watcher = d.watcher
            assert watcher is not None
            real = watcher.scan
            reading, long_file, ended = asyncio.Event(), asyncio.Event(), Pulse()

            async def counted(force: bool = False) -> int:
                nonlocal forced, forced_ended
                forced += force
                if force and forced == 1:
                    reading.set()
                    await long_file.wait()  # a long file, until the burst is over
                try:
                    return await real(force)
                finally:
                    forced_ended += force
                    ended()

            watcher.scan = counted  # type: ignore[method-assign]
            assert d.reload()
            await reading.wait()  # its re-read is under way
            for _ in range(19):
                assert d.reload()
            long_file.set()

            async def second_read_ended() -> bool:
                return forced_ended == 2

            # A third would have begun before this task runs again: the loop that reads
            # again does so at once, and `forced` counts it before anything is awaited.
            await until(second_read_ended, ended)
    assert forced == 2  # the first reload's, and one for the 19 that came during it


async def test_a_reload_that_fails_in_any_way_keeps_the_old_config(tmp_path: Path) -> None:
    """A reload is rejected, the old config kept and READY=1 sent again, whatever goes wrong:
    a config without an API key (which check-config and a start reject; a reload took it),
    or an error that is not a config error. Before, the second escaped the SIGHUP handler
    and left systemd waiting in "reloading" until `systemctl reload` timed out."""
    from structlog.testing import capture_logs

    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        settings = settings_for(tmp_path, rs.base_url)
        no_key = settings.model_copy(
            update={"runa": settings.runa.model_copy(update={"api_key": None})}
        )

        def broken() -> Any:
            raise ValueError("Port out of range 0-65535")

        for attempt in (lambda: no_key, broken):
            notifier = RecordingNotifier()
            async with running_daemon(settings, reload=attempt, notifier=notifier) as d:
                with capture_logs() as logs:
                    assert d.reload() is False
                assert d.settings is settings
                assert notifier.sent[-2:] == ["RELOADING=1", "READY=1"]
                (rejected,) = [e for e in logs if e["event"] == "config.reload_rejected"]
                assert rejected["problems"]
