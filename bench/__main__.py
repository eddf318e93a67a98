"""Run every benchmark and print one table: `python -m bench [--smoke] [--only NAME ...]`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from bench import latency, limiters, overhead, rate, scale, webhooks
from bench.common import Report, machine

BENCHES = {
    "limiters": limiters.run,
    "rate": rate.run,
    "overhead": overhead.run,
    "scale": scale.run,
    "latency": latency.run,
    "webhooks": webhooks.run,
}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--smoke", action="store_true", help="short versions (for CI)")
    p.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="run only these")
    p.add_argument("--out", default="bench/results/latest.json")
    args = p.parse_args()
    report = Report()
    print(f"machine: {machine()}", flush=True)
    for name in args.only or BENCHES:
        asyncio.run(BENCHES[name](report, args.smoke))
    print("\n" + report.table())
    report.write(Path(args.out))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
