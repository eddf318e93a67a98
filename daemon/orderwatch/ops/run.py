"""A daemon run with its signal handlers: installed around `Daemon.run`, removed after."""

from __future__ import annotations

import asyncio
import os
import signal

from orderwatch.ops.daemon import Daemon
from orderwatch.ops.early_signals import take_early


async def run_daemon(daemon: Daemon, stop: asyncio.Event | None = None) -> int:
    """Run with signal handlers installed around it (and removed after): SIGTERM/SIGINT stop,
    a second one exits at once; SIGHUP reloads."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stop() -> None:
        if stop.is_set():
            os._exit(1)  # second signal: leave now; every write is a transaction
        stop.set()

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    loop.add_signal_handler(signal.SIGTERM, on_stop)
    loop.add_signal_handler(signal.SIGINT, on_stop)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    for sig in take_early():  # arrived while the command started (orderwatch.ops.early_signals)
        (daemon.reload if sig == signal.SIGHUP else on_stop)()
    try:
        await daemon.run(stop)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload this late has nothing to reload
    return 0
