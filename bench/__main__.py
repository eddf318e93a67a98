"""Run every benchmark and print one table: `python -m bench [--smoke] [--only NAME ...]`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from bench import finals, latency, limiters, overhead, push, rate, scale, steady, sweep, webhooks
from bench.common import Report, machine
from orderwatch.core import aio

BENCHES = {
    "limiters": limiters.run,
    "rate": rate.run,
    "overhead": overhead.run,
    "scale": scale.run,
    "latency": latency.run,
    "webhooks": webhooks.run,
    "finals": finals.run,
    "steady": steady.run,
    "push": push.run,
    "sweep": sweep.run,
}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--smoke", "--quick", action="store_true", help="short versions (for CI)")
    p.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="run only these")
    p.add_argument("--out", default="bench/results/latest.json")
    p.add_argument(
        "--loop",
        choices=("daemon", "asyncio"),
        default="daemon",
        help="the event loop for in-process runs: the daemon's (uvloop where installed,"
        " as `orderwatch run` uses) or the standard one, to compare",
    )
    args = p.parse_args()
    report = Report()
    run = aio.run if args.loop == "daemon" else asyncio.run
    print(f"machine: {machine()}; in-process event loop: {args.loop}", flush=True)
    for name in args.only or BENCHES:
        run(BENCHES[name](report, args.smoke))
    print("\n" + report.table())
    report.write(Path(args.out))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
