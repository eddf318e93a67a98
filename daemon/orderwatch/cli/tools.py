"""`orderwatch simulate` and `orderwatch demo`: the bundled tools."""

from __future__ import annotations

import argparse
import sys

from orderwatch.core import aio
from orderwatch.devtools import sim_cli, simulator
from orderwatch.devtools.demo import run_demo


def simulate(args: argparse.Namespace) -> int:
    options = sim_cli.options_from_args(args)
    print(f"simulator on http://{args.host}:{args.port}/v2 (Ctrl-C stops)", file=sys.stderr)
    aio.run(simulator.serve_forever(options, args.host, args.port))
    return 0


def demo(args: argparse.Namespace) -> int:

    return aio.run(run_demo(args.orders))
