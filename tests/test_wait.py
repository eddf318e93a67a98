"""One-shot commands: `wait` (polling itself, or handing over to a running daemon without
doubling the rate) and `replay` (same event id, delivered again)."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import pytest

from orderwatch.devtools.receiver import Receiver, running_receiver
from orderwatch.devtools.simulator import SimOptions, running_simulator
from orderwatch.store.lock import DaemonLock

from harness import API_KEY, SECRET, run_in_pty, spawn, until, write_config


async def spawn_holder(cfg: Path, state: Path) -> asyncio.subprocess.Process:
    """`orderwatch run` as a child process, returned once it holds the state's lock."""
    daemon = await spawn("run", "-c", str(cfg), stderr=asyncio.subprocess.DEVNULL)

    async def locked() -> bool:
        return DaemonLock(state).is_held_elsewhere()

    await until(locked)
    return daemon


async def run_cli(*args: str) -> tuple[int, str, str]:
    p = await spawn(*args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 60)
    assert p.returncode is not None
    return p.returncode, out.decode(), err.decode()


@pytest.mark.slow
async def test_wait_polls_itself_and_reports_outcome(tmp_path: Path) -> None:
    """No daemon: wait polls the orders itself; exit 0 when all COMPLETED, 1 if one FAILED."""
    async with running_simulator(SimOptions(api_key=API_KEY, complete_after=0.3)) as rs:
        rs.sim.create(["O-BAD"], complete_after=0.3, status="FAILED")
        cfg = write_config(tmp_path, rs.base_url)
        code, out, err = await run_cli("wait", "-c", str(cfg), "O-W1", "O-W2")
        assert (code, sorted(out.split("\n")[:2])) == (0, ["O-W1 COMPLETED", "O-W2 COMPLETED"]), err
        code, out, _ = await run_cli("wait", "-c", str(cfg), "O-W1", "O-BAD")
        assert code == 1 and "O-BAD FAILED" in out
        assert not DaemonLock(tmp_path / "state").is_held_elsewhere()  # lock given back


@pytest.mark.slow
@pytest.mark.serial
async def test_wait_hands_over_to_a_running_daemon(tmp_path: Path) -> None:
    """With a daemon on the same state, wait only enqueues and follows the store: the server
    sees the daemon's rate, never two pollers."""
    async with running_simulator(SimOptions(api_key=API_KEY, complete_after=0.5)) as rs:
        cfg = write_config(tmp_path, rs.base_url, rate_limit={"requests_per_second": 20})
        daemon = await spawn_holder(cfg, tmp_path / "state")
        try:
            code, out, _ = await run_cli("wait", "-c", str(cfg), *[f"O-H{i}" for i in range(30)])
            assert code == 0 and out.count("COMPLETED") == 30
            # Two pollers would put about 40 in a window. The limiter keeps 20 sends in 1.02 s
            # as they leave; its 2% is all the slack there is for the time between a send and
            # the simulator's record of it, taken here in this test's busy process. On a slow,
            # shared machine that took more than 20 ms (21 in 1 s, once in two CI runs; six
            # runs of this scenario by hand showed arrivals as little as 17-35 ms apart, on a
            # grid of slots 51 ms apart), so the window here allows for it.
            assert rs.sim.max_in_window(0.98) <= 20
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(daemon.wait(), 15) == 0


@pytest.mark.slow
async def test_wait_shows_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal, wait draws a progress bar (tqdm) that reaches 100%."""
    async with running_simulator(SimOptions(api_key=API_KEY, complete_after=0.2)) as rs:
        cfg = write_config(tmp_path, rs.base_url)
        code, screen = await run_in_pty("wait", "-c", str(cfg), "O-T1", "O-T2")
    assert code == 0
    assert "100%" in screen and "2/2" in screen


@pytest.mark.slow
async def test_wait_on_a_terminal_says_who_polls_and_each_change(tmp_path: Path) -> None:
    """On a terminal `wait` showed `0%| | 0/3 [00:00<?]`, frozen until an order ended. Now
    it says that it polls the orders itself, its elapsed time ticks, and each change of an
    order's state is a line: ID, state, answers so far."""
    async with running_simulator(SimOptions(api_key=API_KEY, complete_after=1.5)) as rs:
        # A poll a second, each written to the store at once (a short lease holds none in
        # memory: held polls reach the store, and so `wait`, up to 10 s late).
        polling = {"initial_delay": "1s", "backoff_factor": 1, "max_interval": "1s", "lease": "3s"}
        cfg = write_config(tmp_path, rs.base_url, runa={"timeout": "1s"}, polling=polling)
        code, screen = await run_in_pty("wait", "-c", str(cfg), "O-P1", "O-404A")
    lines = [line.rsplit("\r", 1)[-1].strip() for line in screen.splitlines()]
    assert code == 1, screen  # O-404A ends NOT_FOUND (not_found_grace is 1s here)
    assert f"no daemon runs on {tmp_path / 'state'}: polling 2 order(s) here" in lines
    assert any(re.fullmatch(r"O-P1 processing \(answers: \d+ processing\)", x) for x in lines)
    assert any(
        re.fullmatch(r"O-404A http 404 \(answers: 0 processing, \d+ failed in a row\)", x)
        for x in lines
    )
    assert any(re.fullmatch(r"O-P1 COMPLETED \(answers: \d+ processing\)", x) for x in lines)
    assert any(
        re.fullmatch(r"O-404A NOT_FOUND \(answers: 0 processing, \d+ failed in a row\)", x)
        for x in lines
    )
    elapsed = set(re.findall(r"\[(\d\d:\d\d)<", screen))
    assert len(elapsed) >= 2, screen  # 1.5 s without an order ending: the clock moved


@pytest.mark.slow
async def test_wait_on_a_terminal_says_it_handed_the_orders_over(tmp_path: Path) -> None:
    """With a daemon on the same state, `wait` on a terminal says it handed the orders to it."""
    async with running_simulator(SimOptions(api_key=API_KEY, complete_after=0.3)) as rs:
        cfg = write_config(tmp_path, rs.base_url)
        daemon = await spawn_holder(cfg, tmp_path / "state")
        try:
            code, screen = await run_in_pty("wait", "-c", str(cfg), "O-H1")
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(daemon.wait(), 15) == 0
    assert code == 0, screen
    assert (
        f"handed 1 order(s) to the daemon running on {tmp_path / 'state'}; following them" in screen
    )
    assert "O-H1 COMPLETED" in screen


@pytest.mark.slow
async def test_replay_redelivers_with_the_same_id(tmp_path: Path) -> None:
    """replay sends a final event again to every sink, under the same webhook-id and bytes."""
    receiver = Receiver(SECRET)
    async with (
        running_simulator(SimOptions(api_key=API_KEY, complete_after=0)) as rs,
        running_receiver(receiver) as url,
    ):
        cfg = write_config(tmp_path, rs.base_url, webhooks=[{"url": url, "secret": SECRET}])
        assert (await run_cli("wait", "-c", str(cfg), "O-RP"))[0] == 0
        assert len(receiver.events) == 1
        code, out, err = await run_cli("replay", "-c", str(cfg), "O-RP")
        assert code == 0, err
        assert "delivered" in out
        code, _, err = await run_cli("replay", "-c", str(cfg), "O-NEVER")
        assert code == 2 and "no final event yet" in err
    first, again = receiver.events
    assert first.event_id == again.event_id and first.body == again.body
    assert first.headers["webhook-timestamp"] <= again.headers["webhook-timestamp"]


@pytest.mark.slow
async def test_a_wait_that_handed_over_polls_itself_when_the_holder_stops(tmp_path: Path) -> None:
    """A second `wait` hands its orders to the first one's embedded daemon; when the first
    exits (its own orders ended), the second takes the state over and polls them itself."""
    async with running_simulator(SimOptions(api_key=API_KEY, complete_after=0.3)) as rs:
        rs.sim.create(["O-FIRST"], complete_after=0.5)
        rs.sim.create(["O-SECOND"], complete_after=3.0)
        cfg = write_config(tmp_path, rs.base_url)
        first = await spawn("wait", "-c", str(cfg), "O-FIRST", stdout=asyncio.subprocess.PIPE)

        async def locked() -> bool:
            return DaemonLock(tmp_path / "state").is_held_elsewhere()

        await until(locked)
        code, out, err = await run_cli("wait", "-c", str(cfg), "--timeout", "30s", "O-SECOND")
        assert (code, out.strip()) == (0, "O-SECOND COMPLETED"), err
        assert await asyncio.wait_for(first.wait(), 15) == 0
        assert first.stdout is not None and b"O-FIRST COMPLETED" in await first.stdout.read()


@pytest.mark.slow
async def test_a_wait_leaves_a_restarting_daemon_its_state(tmp_path: Path) -> None:
    """The daemon `wait` handed its orders to stops and is started again a second later (as
    systemd's Restart= does): the restart gets the state and finishes the orders. `wait` took
    the state over within half a second, so the restart failed with "already running" (and,
    repeated, would have tripped systemd's start limit for good)."""
    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        rs.sim.create(["O-RESTART"], complete_after=4.0)
        cfg = write_config(tmp_path, rs.base_url)
        daemon = await spawn_holder(cfg, tmp_path / "state")
        waiter = await spawn(
            "wait", "-c", str(cfg), "--timeout", "60s", "O-RESTART", stdout=asyncio.subprocess.PIPE
        )
        await asyncio.sleep(1.0)  # it has handed the order over and follows the store
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 15) == 0
        await asyncio.sleep(1.0)  # RestartSec=
        restarted = await spawn("run", "-c", str(cfg), stderr=asyncio.subprocess.PIPE)
        try:
            out, _ = await asyncio.wait_for(waiter.communicate(), 30)
            assert restarted.returncode is None  # still running: it got the state
        finally:
            if restarted.returncode is None:
                restarted.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(restarted.communicate(), 15)
    assert waiter.returncode == 0 and out.decode().strip() == "O-RESTART COMPLETED"
    assert b"already running" not in err


async def test_wait_stopped_by_sigint_says_so_in_one_line(tmp_path: Path) -> None:
    """Ctrl-C while `wait` polls itself: exit 1 with one clear line, no traceback."""
    async with running_simulator(SimOptions(api_key=API_KEY, complete_after=100)) as rs:
        cfg = write_config(tmp_path, rs.base_url)
        p = await spawn(
            "wait",
            "-c",
            str(cfg),
            "O-LONG",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

        async def polled() -> bool:
            return bool(rs.sim.arrivals)

        await until(polled, rs.sim.changed)
        p.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(p.communicate(), 30)
        assert (p.returncode, err.decode()) == (
            1,
            "orderwatch: stopped with orders still pending\n",
        )


@pytest.mark.slow
async def test_a_wait_keeps_its_timeout_when_the_daemon_stops(tmp_path: Path) -> None:
    """The daemon `wait` handed over to stops: `wait` leaves it 10 s to restart, but not past
    its own --timeout (it waited the whole grace, then started a daemon of its own only to
    say the order was pending: --timeout 2s took 12 s)."""
    import time

    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        rs.sim.create(["O-SLOW"], complete_after=3600)
        cfg = write_config(tmp_path, rs.base_url)
        daemon = await spawn_holder(cfg, tmp_path / "state")
        t0 = time.monotonic()
        waiter = await spawn(
            "wait", "-c", str(cfg), "--timeout", "3s", "O-SLOW", stderr=asyncio.subprocess.PIPE
        )
        await asyncio.sleep(1.0)  # it has handed the order over and follows the store
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 15) == 0
        _, err = await asyncio.wait_for(waiter.communicate(), 30)
        elapsed = time.monotonic() - t0
    assert waiter.returncode == 1 and b"1 order(s) still pending" in err
    assert elapsed < 3.0 + 2.5, elapsed  # the timeout, and a start's worth of slack


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["int", "term"])
@pytest.mark.slow
async def test_a_wait_that_handed_over_stops_on_a_signal_in_one_line(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """Handing over to a running daemon, `wait` ended on SIGINT with exit 130 and nothing
    said, and SIGTERM killed it; polling itself it says one line and exits 1. Now both."""
    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        rs.sim.create(["O-HELD"], complete_after=3600)
        cfg = write_config(tmp_path, rs.base_url)
        daemon = await spawn_holder(cfg, tmp_path / "state")
        try:
            waiter = await spawn("wait", "-c", str(cfg), "O-HELD", stderr=asyncio.subprocess.PIPE)

            async def handed_over() -> bool:  # the daemon polls it: `wait` added it, and follows
                return bool(rs.sim.arrivals)

            await until(
                handed_over, rs.sim.changed
            )  # a fixed 1.5 s was too short for a slow machine's start
            waiter.send_signal(sig)
            _, err = await asyncio.wait_for(waiter.communicate(), 15)
        finally:
            daemon.send_signal(signal.SIGTERM)
            await asyncio.wait_for(daemon.wait(), 15)
    assert (waiter.returncode, err.decode()) == (
        1,
        "orderwatch: stopped with orders still pending\n",
    )
