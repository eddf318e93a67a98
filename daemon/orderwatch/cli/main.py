"""The command line. The only place that prints for people and picks exit codes:
0 success, 1 runtime failure, 2 usage or config error. No traceback for a user mistake."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from orderwatch.cli import verify
from orderwatch.cli.args import config_arg, duration
from orderwatch.core.errors import ConfigError, OrderwatchError
from orderwatch.core.version import __version__
from orderwatch.devtools import simulator

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orderwatch",
        description="Follow Runa orders until they are final; write and announce the result.",
    )
    parser.add_argument("--version", action="version", version=f"orderwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("run", help="run the daemon in the foreground")
    config_arg(p)
    p = sub.add_parser("check-config", help="validate the config; exit 2 when invalid")
    config_arg(p)
    p = sub.add_parser("add", help="enqueue order IDs (daemon running or not)")
    config_arg(p)
    p.add_argument("ids", nargs="+", metavar="ID")
    p = sub.add_parser("status", help="counts by state, or each order's state")
    config_arg(p)
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("replay", help="deliver orders' final events again, same event id")
    config_arg(p)
    p.add_argument("ids", nargs="+", metavar="ID")
    p = sub.add_parser("wait", help="follow orders until final; exit 0 if all COMPLETED")
    config_arg(p)
    p.add_argument("ids", nargs="+", metavar="ID")
    p.add_argument(
        "--timeout", type=duration, metavar="DURATION", help="give up waiting after this long"
    )
    p = sub.add_parser("simulate", help="serve the bundled Runa API simulator")
    simulator.add_arguments(p)
    p = sub.add_parser("demo", help="simulator + daemon + webhook receiver in a temp dir")
    p.add_argument("--orders", type=int, default=6, help="how many orders to follow")
    config_arg(verify.add_parser(sub))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = _handlers()[args.command]
    try:
        return handler(args)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return e.exit_code
    except OrderwatchError as e:
        print(f"orderwatch: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


def _handlers() -> dict[str, Handler]:
    # Imported when a command runs: `orderwatch --help` and `--version` stay quick.
    from orderwatch.cli import orders, service, tools, verify

    return {
        "run": service.run,
        "check-config": service.check_config,
        "add": orders.add,
        "status": orders.status,
        "replay": orders.replay,
        "wait": orders.wait,
        "simulate": tools.simulate,
        "demo": tools.demo,
        "verify": verify.run_verify,
    }
