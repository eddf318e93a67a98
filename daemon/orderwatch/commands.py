"""What each CLI command does. Each returns an exit code; errors are raised as OrderwatchError
and rendered by cli.main."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from contextlib import AsyncExitStack

from orderwatch import aio
from orderwatch.cli import load, need_valid_ids, split_ids
from orderwatch.daemon import Daemon, api_key_of
from orderwatch.errors import StoreError
from orderwatch.logs import configure_logging
from orderwatch.settings import Settings
from orderwatch.signals import take_early
from orderwatch.store.open import daemon_running, open_store


def _setup_logging(settings: Settings, one_shot: bool = False) -> None:
    """One-shot commands (wait, replay) log warnings and up unless debug is asked for: their
    own output is what a person reads."""
    from orderwatch.secrets import register_secrets

    level = settings.logging.level
    if one_shot and level == "info":
        level = "warning"
    configure_logging(settings.logging.format, level)
    register_secrets(settings)


def check_config(args: argparse.Namespace) -> int:
    from orderwatch.sinks import build_sinks

    settings = load(args, delivers=True)
    api_key_of(settings, _source(args))
    build_sinks(settings)
    print(
        f"{_source(args)}: ok ({len(settings.watchlists)} watchlists,"
        f" {len(settings.webhooks)} webhooks)"
    )
    return 0


def _source(args: argparse.Namespace) -> str:
    from orderwatch.config import resolve_config_path

    return str(resolve_config_path(args.config, os.environ))


def run(args: argparse.Namespace) -> int:
    settings = load(args, delivers=True)
    api_key_of(settings, _source(args))
    _setup_logging(settings)
    return aio.run(run_daemon(Daemon(settings, reload=lambda: load(args))))


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
    for sig in take_early():  # arrived while the command started (orderwatch.signals)
        (daemon.reload if sig == signal.SIGHUP else on_stop)()
    try:
        await daemon.run(stop)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload this late has nothing to reload
    return 0


def add(args: argparse.Namespace) -> int:
    settings = load(args)
    good, error = split_ids(args.ids)
    added = asyncio.run(_add(settings, good)) if good else 0
    try:
        running = daemon_running(settings)
    except StoreError as e:  # the orders are in: only whether a daemon runs is unknown
        running = False
        print(f"orderwatch: cannot tell whether a daemon runs: {e}", file=sys.stderr)
    if good:
        print(
            f"accepted {len(good)} order(s), {added} new"
            + ("; the running daemon picks them up" if running else "")
        )
    if error:
        print(f"orderwatch: {error}", file=sys.stderr)
        return 2
    return 0


async def _add(settings: Settings, ids: list[str]) -> int:
    async with AsyncExitStack() as stack:
        store = await open_store(settings, stack, daemon=False, now=time.time())
        now = time.time()
        return await store.add_orders(ids, now, now + settings.polling.initial_delay_s)


def status(args: argparse.Namespace) -> int:
    from orderwatch.status_view import gather_status, render_status

    settings = load(args)
    ids = need_valid_ids(args.ids) if args.ids else []
    report = asyncio.run(gather_status(settings, ids))
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render_status(report, now=time.time()))
    missing = report.get("unknown", [])
    return 1 if missing else 0


def replay(args: argparse.Namespace) -> int:
    from orderwatch.oneshot import replay_orders

    settings = load(args, delivers=True)
    ids = need_valid_ids(args.ids)
    _setup_logging(settings, one_shot=True)
    return asyncio.run(replay_orders(settings, ids))


def wait(args: argparse.Namespace) -> int:
    from orderwatch.oneshot import wait_for_orders

    settings = load(args, delivers=True)
    ids = need_valid_ids(args.ids)
    _setup_logging(settings, one_shot=True)
    return aio.run(wait_for_orders(settings, ids, args.timeout))


def simulate(args: argparse.Namespace) -> int:
    from orderwatch import simulator

    options = simulator.options_from_args(args)
    print(f"simulator on http://{args.host}:{args.port}/v2 (Ctrl-C stops)", file=sys.stderr)
    aio.run(simulator.serve_forever(options, args.host, args.port))
    return 0


def demo(args: argparse.Namespace) -> int:
    from orderwatch.demo import run_demo

    return aio.run(run_demo(args.orders))
