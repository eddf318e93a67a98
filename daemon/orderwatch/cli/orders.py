"""`orderwatch add`, `status`, `replay` and `wait`: the commands about orders."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from contextlib import AsyncExitStack

from orderwatch.cli.args import load, need_valid_ids, setup_logging, split_ids
from orderwatch.cli.status_view import gather_status, render_status
from orderwatch.config.models import Settings
from orderwatch.config.unused_secrets import NOT_CALLING, STORE_ONLY
from orderwatch.core import aio
from orderwatch.core.errors import StoreError
from orderwatch.ops.oneshot import replay_orders, wait_for_orders
from orderwatch.store.open import daemon_running, open_store


def add(args: argparse.Namespace) -> int:
    settings = load(args, unused=STORE_ONLY)
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

    settings = load(args, unused=STORE_ONLY)
    ids = need_valid_ids(args.ids) if args.ids else []
    report = asyncio.run(gather_status(settings, ids))
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render_status(report, now=time.time()))
    missing = report.get("unknown", [])
    return 1 if missing else 0


def replay(args: argparse.Namespace) -> int:

    settings = load(args, delivers=True, unused=NOT_CALLING)
    ids = need_valid_ids(args.ids)
    setup_logging(settings, one_shot=True)
    return asyncio.run(replay_orders(settings, ids))


def wait(args: argparse.Namespace) -> int:

    settings = load(args, delivers=True)
    ids = need_valid_ids(args.ids)
    setup_logging(settings, one_shot=True)
    return aio.run(wait_for_orders(settings, ids, args.timeout))
