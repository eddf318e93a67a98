"""One-shot commands that need the engine: `wait` and `replay`.

`wait` never doubles the rate limit: if a daemon owns the embedded state it only hands the
orders over and follows the store; otherwise it takes the daemon lock and polls itself (a
daemon started meanwhile refuses to start). With PostgreSQL it runs as one more replica, under
the cluster-wide limiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack

from orderwatch.config.models import Settings
from orderwatch.core.aio import wait_any
from orderwatch.core.errors import StateLockedError, UsageError
from orderwatch.delivery.outbox import Deliverer
from orderwatch.delivery.sinks import build_sinks
from orderwatch.ops.daemon import Daemon
from orderwatch.ops.progress import WaitProgress
from orderwatch.ops.run import run_daemon
from orderwatch.store.base import Store
from orderwatch.store.open import daemon_running, last_holder_role, open_store

FOLLOW_INTERVAL_S = 0.5
# A `run` daemon that stopped may be restarting (systemd's RestartSec=): `wait` leaves it the
# state this long before taking over, or the restart would find it held and fail.
RESTART_GRACE_S = 10.0


async def wait_for_orders(settings: Settings, ids: list[str], limit_s: float | None) -> int:
    deadline = _deadline(limit_s)
    progress = WaitProgress(len(ids))
    stopped = asyncio.Event()  # SIGINT or SIGTERM while no daemon of ours runs
    try:
        while True:
            if daemon_running(settings):
                with _stop_on_signals(stopped):
                    code = await _hand_over(settings, ids, deadline, progress, stopped)
            else:
                try:
                    code = await _poll_here(settings, ids, deadline, progress)
                except StateLockedError:  # taken between the check and ours: hand over to it
                    code = None
            if code is not None:
                return code
            # Whoever held the state stopped (another `wait` whose own orders ended, or a
            # daemon that was stopped) while ours are pending: poll them here, or hand over
            # to whoever took the state meanwhile.
            with _stop_on_signals(stopped):
                if not stopped.is_set():
                    await wait_any(stopped, timeout=FOLLOW_INTERVAL_S)
                    await _let_a_daemon_restart(settings, deadline, stopped)
            if stopped.is_set():  # as `_poll_here` says it when a signal stops its daemon
                print("orderwatch: stopped with orders still pending", file=sys.stderr)
                return 1
    finally:
        progress.close()


@contextlib.contextmanager
def _stop_on_signals(stopped: asyncio.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `stopped` (a daemon of our own installs its own handlers)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _let_a_daemon_restart(
    settings: Settings, deadline: float | None, stopped: asyncio.Event
) -> None:
    """Leave a stopped `run` daemon RESTART_GRACE_S to come back, never past `deadline`."""
    if last_holder_role(settings) != "run":
        return  # another `wait`, which is not coming back
    end = time.monotonic() + RESTART_GRACE_S
    if deadline is not None:
        end = min(end, deadline)
    while time.monotonic() < end and not stopped.is_set():
        if daemon_running(settings):
            return
        await wait_any(stopped, timeout=FOLLOW_INTERVAL_S)


async def _hand_over(
    settings: Settings,
    ids: list[str],
    deadline: float | None,
    progress: WaitProgress,
    stopped: asyncio.Event,
) -> int | None:
    """Enqueue for the process that holds the state and follow the store while it does (and
    until a signal stops us)."""
    async with AsyncExitStack() as stack:
        store = await open_store(settings, stack, daemon=False, now=time.time())
        now = time.time()
        await store.add_orders(ids, now, now + settings.polling.initial_delay_s)
        progress.say(
            f"handed {len(ids)} order(s) to the daemon running on {settings.state_dir};"
            " following them"
        )
        return await _follow(
            store,
            ids,
            deadline,
            progress,
            lambda: daemon_running(settings) and not stopped.is_set(),
        )


async def _poll_here(
    settings: Settings, ids: list[str], deadline: float | None, progress: WaitProgress
) -> int | None:
    daemon = Daemon(settings, role="wait")
    stop = asyncio.Event()
    task = asyncio.create_task(run_daemon(daemon, stop))
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait([task, ready], return_when="FIRST_COMPLETED")
    if task.done():
        ready.cancel()
        task.result()  # raises what stopped it (lock held, bad config)
        return 1
    try:
        await daemon.add_orders(ids)
        progress.say(_polling_here(settings, len(ids)))
        # Followed through a connection of its own: the daemon closes its store when a
        # signal stops it, and this one still reads.
        async with AsyncExitStack() as stack:
            store = await open_store(settings, stack, daemon=False, now=time.time())
            code = await _follow(store, ids, deadline, progress, lambda: not task.done())
            if code is None:  # SIGINT or SIGTERM stopped the daemon, or it failed
                task.result()
                print("orderwatch: stopped with orders still pending", file=sys.stderr)
                return 1
            await settle_deliveries(store, ids, settings.shutdown_timeout_s)
            return code
    finally:
        stop.set()
        await task


def _polling_here(settings: Settings, n: int) -> str:
    if settings.state_dsn is not None:
        return f"polling {n} order(s) here, one more replica on the shared PostgreSQL state"
    return f"no daemon runs on {settings.state_dir}: polling {n} order(s) here"


async def follow(store: Store, ids: list[str], limit_s: float | None) -> int:
    """Watch the store until every order has ended; 0 if all COMPLETED, else 1."""
    progress = WaitProgress(len(ids))
    try:
        code = await _follow(store, ids, _deadline(limit_s), progress, lambda: True)
    finally:
        progress.close()
    assert code is not None
    return code


async def _follow(
    store: Store,
    ids: list[str],
    deadline: float | None,
    progress: WaitProgress,
    polled: Callable[[], bool],
) -> int | None:
    """`follow`, and None as soon as `polled()` says nobody polls the pending orders."""
    while True:
        done = progress.show(await store.get_orders(ids))
        if len(done) == len(ids):
            return 0 if all(r.final_status == "COMPLETED" for r in done) else 1
        if deadline is not None and time.monotonic() >= deadline:
            print(f"orderwatch: {len(ids) - len(done)} order(s) still pending", file=sys.stderr)
            return 1
        if not polled():
            return None
        await asyncio.sleep(FOLLOW_INTERVAL_S)


def _deadline(limit_s: float | None) -> float | None:
    return None if limit_s is None else time.monotonic() + limit_s


async def settle_deliveries(store: Store, ids: list[str], budget_s: float) -> None:
    """Give the first delivery attempt of these orders' events a bounded chance to happen."""
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        rows = await store.get_deliveries(ids)
        if all(r.state != "pending" or r.attempts > 0 for r in rows):
            return
        await asyncio.sleep(0.1)


async def replay_orders(settings: Settings, ids: list[str]) -> int:
    """Queue the final events again (same event ids); deliver them now if no daemon runs."""
    running = daemon_running(settings)
    async with AsyncExitStack() as stack:
        store = await open_store(settings, stack, daemon=not running, now=time.time())
        missing = [i for i in ids if await store.get_event(i) is None]
        if missing:
            raise UsageError(f"no final event yet for: {', '.join(missing[:5])}")
        sinks = build_sinks(settings)
        for sink in sinks:
            stack.push_async_callback(sink.close)
        if not sinks:
            raise UsageError("no sinks configured (webhooks, commands or callbacks)")
        queued = await store.replay(ids, [s.id for s in sinks], time.time())
        if running:
            print(f"queued {queued} delivery(ies); the running daemon sends them")
            return 0
        owner = f"replay:{os.getpid()}"
        await Deliverer(store, sinks, owner=owner).run_until_idle()
        rows = await store.get_deliveries(ids)
        for r in rows:
            print(f"{r.order_id} -> {r.sink}: {r.state} ({r.last_outcome or '-'})")
        return 0 if all(r.state == "delivered" for r in rows) else 1
