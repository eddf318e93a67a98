"""Operating the daemon: reload, shutdown, the admin API and metrics, and what logs hold."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from orderwatch.devtools.receiver import Receiver, running_receiver
from orderwatch.devtools.simulator import Faults, SimOptions, running_simulator
from orderwatch.ops.daemon import Daemon

from harness import (
    API_KEY,
    SECRET,
    RecordingNotifier,
    config_dict,
    free_port,
    http,
    running_daemon,
    settings_for,
    spawn,
    states,
    until,
    write_config,
)


async def test_admin_api_and_metrics(tmp_path: Path) -> None:
    """/healthz, /readyz, /metrics (parsed by prometheus-client with every family), POST
    /orders behind a bearer token, GET /orders/{id} without any payload."""
    port = free_port()
    (tmp_path / "token").write_text("s3cret-admin-token\n")
    async with running_simulator(SimOptions(api_key=API_KEY, complete_after=0.2)) as rs:
        settings = settings_for(
            tmp_path,
            rs.base_url,
            admin={"listen": f"127.0.0.1:{port}", "token_file": str(tmp_path / "token")},
        )
        base = f"http://127.0.0.1:{port}"
        async with running_daemon(settings) as d:
            assert (await http("GET", f"{base}/healthz"))[0] == 200
            assert (await http("GET", f"{base}/readyz")) == (200, '{"ready": true, "reason": "ok"}')
            body = {"ids": ["O-ADM1", "../etc"]}
            assert (await http("POST", f"{base}/orders", json=body))[0] == 401
            status, text = await http(
                "POST",
                f"{base}/orders",
                json=body,
                headers={"Authorization": "Bearer s3cret-admin-token"},
            )
            assert status == 200 and json.loads(text) == {
                "accepted": 1,
                "new": 1,
                "invalid": ["../etc"],
            }
            assert (
                await http(
                    "POST",
                    f"{base}/orders",
                    data=b"nope",
                    headers={
                        "Authorization": "Bearer s3cret-admin-token",
                        "Content-Type": "application/json",
                    },
                )
            )[0] == 400

            async def final() -> bool:
                return (await d.store.counts())["final"] == 1  # type: ignore[union-attr]

            await until(final)
            status, text = await http("GET", f"{base}/orders/O-ADM1")
            order = json.loads(text)
            assert status == 200 and order["state"] == "final" and "items" not in text
            assert (await http("GET", f"{base}/orders/O-NOPE"))[0] == 404
            _, metrics = await http("GET", f"{base}/metrics")
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    for name in (
        "orderwatch_api_requests",
        "orderwatch_orders",
        "orderwatch_oldest_pending_age_seconds",
        "orderwatch_limiter_wait_seconds",
        "orderwatch_api_rate_limited",
        "orderwatch_delivery_attempts",
        "orderwatch_orders_finished",
        "orderwatch_delivery_latency_seconds",
        "orderwatch_deliveries_dead",
        "orderwatch_last_successful_poll_timestamp_seconds",
        "orderwatch_api_request_duration_seconds",
        "orderwatch_ready",
    ):
        assert name in families, name
    finals = [s for s in families["orderwatch_orders"].samples if s.labels == {"state": "final"}]
    assert finals[0].value == 1
    # every known label value is there from the start (an alert sees 0, not no data)
    dead = [
        s for s in families["orderwatch_delivery_attempts"].samples if s.labels["result"] == "dead"
    ]
    assert [s.value for s in dead] == [0]
    statuses = {s.labels["status"] for s in families["orderwatch_orders_finished"].samples}
    assert statuses == {"COMPLETED", "FAILED", "EXPIRED", "NOT_FOUND"}
    assert "O-ADM1" not in metrics  # no order-id labels


async def test_admin_api_answers_hostile_bodies_and_a_failing_store_in_json(
    tmp_path: Path,
) -> None:
    """Deeply nested JSON is a 400, not a RecursionError; a state store that fails is a JSON
    503 the caller can retry, not an HTML 500 with a traceback in the log."""
    from structlog.testing import capture_logs

    from orderwatch.core.errors import StoreError

    port = free_port()
    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        settings = settings_for(tmp_path, rs.base_url, admin={"listen": f"127.0.0.1:{port}"})
        base = f"http://127.0.0.1:{port}"
        async with running_daemon(settings) as d:
            status, text = await http(
                "POST",
                f"{base}/orders",
                data=b"[" * 100_000,
                headers={"Content-Type": "application/json"},
            )
            assert status == 400 and json.loads(text)["error"].startswith("body must be JSON")

            async def broken(*_a: object, **_k: object) -> object:
                raise StoreError("state database: disk I/O error")

            store = d.store
            assert store is not None
            store.add_orders, store.get_orders = broken, broken  # type: ignore[method-assign,assignment]
            with capture_logs() as logs:
                posted = await http("POST", f"{base}/orders", json={"ids": ["O-1"]})
                got = await http("GET", f"{base}/orders/O-1")
    for status, text in (posted, got):
        assert status == 503, (status, text)
        assert json.loads(text) == {"error": "the state store is unavailable; try again"}
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["store.unavailable"] * 2


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("PROMTOOL_REQUIRED"),
    reason="promtool not installed (Debian: the prometheus package; .ci/run fetches it)",
)
async def test_metrics_pass_promtool(tmp_path: Path) -> None:
    """`promtool check metrics` finds nothing to say about /metrics of a daemon that has
    polled, finished an order and delivered to a webhook (every family has samples)."""
    assert PROMTOOL is not None, "PROMTOOL_REQUIRED is set but promtool is not on PATH"
    port = free_port()
    receiver = Receiver(SECRET)
    opts = SimOptions(api_key=API_KEY, complete_after=0.2)
    async with running_simulator(opts) as rs, running_receiver(receiver) as url:
        settings = settings_for(
            tmp_path,
            rs.base_url,
            admin={"listen": f"127.0.0.1:{port}"},
            webhooks=[{"url": url, "secret": SECRET}],
        )
        async with running_daemon(settings) as d:
            await d.add_orders(["O-PROM1"])

            async def delivered() -> bool:
                return len(receiver.events) == 1

            await until(delivered)
            _, metrics = await http("GET", f"http://127.0.0.1:{port}/metrics")
    assert "orderwatch_delivery_latency_seconds_count 1" in metrics
    r = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=metrics, capture_output=True, text=True, timeout=60
    )
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


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

        await until(in_flight)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 15)
        elapsed = time.monotonic() - t0
        await reader
    assert code == 0
    assert elapsed < 2.0 + 3.0  # shutdown_timeout (2 s) plus start-up slack of the exit path
    rejected = next(e for e in lines if e["event"] == "config.reload_rejected")
    assert "YAML syntax error" in json.dumps(rejected)


@pytest.mark.slow
async def test_logs_never_hold_secrets_or_payout_urls(tmp_path: Path) -> None:
    """A full run with errors, 401s, retries, webhooks and a config dump, at debug level:
    the API key, the webhook secret and every payout URL appear nowhere in the logs."""
    receiver = Receiver(SECRET, fail_first=3)
    faults = Faults(rate_5xx=0.1, rate_malformed=0.1, rate_reset=0.05)
    async with (
        running_simulator(
            SimOptions(api_key=API_KEY, complete_after=0.3, seed=5, faults=faults)
        ) as rs,
        running_receiver(receiver) as url,
    ):
        cfg_path = tmp_path / "ow.yaml"
        cfg = config_dict(
            tmp_path,
            rs.base_url,
            logging={"format": "json", "level": "debug"},
            webhooks=[{"url": url, "secret": SECRET, "retry_schedule": ["100ms"] * 5}],
            commands=[["/bin/false"]],
        )
        cfg_path.write_text(yaml.safe_dump(cfg))
        ids = [f"O-LOG{i}" for i in range(15)]
        rs.sim.create(["O-LOGSLOW"], complete_after=3600)  # still polled when the key breaks
        assert await (await spawn("add", "-c", str(cfg_path), *ids, "O-LOGSLOW")).wait() == 0
        proc = await spawn("run", "-c", str(cfg_path), stderr=asyncio.subprocess.PIPE)
        out = bytearray()

        async def read() -> None:
            assert proc.stderr is not None
            async for raw in proc.stderr:
                out.extend(raw)

        reader = asyncio.create_task(read())

        async def heard() -> bool:
            return {e.order_id for e in receiver.events} == set(ids)

        await until(heard, timeout=30)
        rs.sim.set_faults(Faults(bad_key=True))  # and an auth failure, for its error line

        async def auth_failed() -> bool:
            return b"api.auth_failed" in out

        await until(auth_failed, timeout=10)
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        await reader
        urls = [
            item["payout"]["url"]
            for i in ids
            for item in (rs.sim.payload(i) or {}).get("items", [])
        ]
    text = out.decode()
    assert "order.final" in text and "config.loaded" in text and "api.auth_failed" in text
    assert urls, "the run produced payout links to look for"
    for secret in (API_KEY, SECRET, SECRET.removeprefix("whsec_"), *urls):
        assert secret not in text, secret
    assert "spend.runa.io" not in text


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

            await until(final, timeout=10)
        finally:
            stop.set()
            await task
    assert notifier.sent[:3] == ["READY=1", "RELOADING=1", "READY=1"]


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

        await until(hangs)
        stop.set()
        await asyncio.sleep(0.3)
        assert not task.done()
        assert "STOPPING=1" in notifier.sent
        assert daemon.readiness() == (False, "stopping")
        ready = await http("GET", f"http://127.0.0.1:{port}/readyz")
        posted = await http("POST", f"http://127.0.0.1:{port}/orders", json={"ids": ["O-2"]})
        assert daemon.reload() is False
        await task
    assert ready[0] == 503 and json.loads(ready[1])["reason"] == "stopping"
    assert posted[0] == 503
    assert notifier.sent.count("RELOADING=1") == 0


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
            forced = 0
            watcher = d.watcher
            assert watcher is not None
            real = watcher.scan

            async def counted(force: bool = False) -> int:
                nonlocal forced
                forced += force
                await asyncio.sleep(0.2)  # a long file
                return await real(force)

            watcher.scan = counted  # type: ignore[method-assign]
            assert d.reload()
            await asyncio.sleep(0.05)  # its re-read is under way
            for _ in range(19):
                assert d.reload()
            await asyncio.sleep(1.0)
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
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGHUP)
                await asyncio.sleep(0.002)
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
