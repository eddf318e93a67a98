"""`orderwatch run` and `orderwatch check-config`."""

from __future__ import annotations

import argparse

from orderwatch.cli.args import load, setup_logging, source
from orderwatch.core import aio
from orderwatch.delivery.sinks import build_sinks
from orderwatch.ops.daemon import Daemon, api_key_of
from orderwatch.ops.run import run_daemon


def check_config(args: argparse.Namespace) -> int:

    settings = load(args, delivers=True, checks=True)
    api_key_of(settings, source(args))
    build_sinks(settings)
    print(
        f"{source(args)}: ok ({len(settings.watchlists)} watchlists,"
        f" {len(settings.webhooks)} webhooks)"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    settings = load(args, delivers=True)
    api_key_of(settings, source(args))
    setup_logging(settings)
    return aio.run(run_daemon(Daemon(settings, reload=lambda: load(args))))
