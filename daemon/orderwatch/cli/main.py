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
from orderwatch.devtools import sim_cli

Handler = Callable[[argparse.Namespace], int]

RUN = """\
Run the daemon in the foreground until SIGTERM or Ctrl-C: poll every order of the
watchlists and of `orderwatch add` under the rate limit, write each final order to
output_dir/ID.json and announce it to the webhooks, commands and callbacks.
SIGHUP reloads the config."""
CHECK_CONFIG = """\
Read the config as `run` would and report each problem as `file:line: key: problem`;
also each watchlist that this user cannot read (missing, a directory, no permission),
which `run` would only warn about once started. Exit 0 when valid, 2 when not."""
ADD = """\
Add order IDs to the state. A daemon running on the same state polls them at once;
otherwise the next `orderwatch run` (or `wait`) does. Adding an ID twice tracks it once."""
STATUS = """\
Without IDs: how many orders and deliveries are in each state. With IDs: each order's
state, its answers so far, its next poll, its last error and its deliveries.
Exit 1 when one of the IDs is not tracked."""
REPLAY = """\
Deliver the final events of these orders again to every configured sink, under the same
event id (receivers de-duplicate on it). A running daemon sends them; otherwise they are
sent now and each delivery's outcome is printed. Exit 1 when one was not delivered."""
WAIT = """\
Follow orders until each has ended; exit 0 when all COMPLETED, else 1. When a daemon
runs on the same state the orders are handed to it and followed; otherwise `wait` polls
them itself, under the same rate limit. Each ended order is printed as `ID STATUS`."""
DEMO = """\
Start the bundled simulator, a daemon and a signature-checking webhook receiver in a
temporary directory, follow a few orders until they end, then show the payload files
and the webhooks received. No file outside the temporary directory is written."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orderwatch",
        description="Follow Runa orders until they are final; write and announce the result.",
    )
    parser.add_argument("--version", action="version", version=f"orderwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=summary,
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = command("run", "run the daemon in the foreground", RUN)
    config_arg(p)
    p = command("check-config", "validate the config; exit 2 when invalid", CHECK_CONFIG)
    config_arg(p)
    p = command("add", "enqueue order IDs (daemon running or not)", ADD)
    config_arg(p)
    p.add_argument("ids", nargs="+", metavar="ID", help="Runa order IDs (O-...)")
    p = command("status", "counts by state, or each order's state", STATUS)
    config_arg(p)
    p.add_argument("ids", nargs="*", metavar="ID", help="orders to show (none: counts only)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = command("replay", "deliver orders' final events again, same event id", REPLAY)
    config_arg(p)
    p.add_argument("ids", nargs="+", metavar="ID", help="orders whose final event to send again")
    p = command("wait", "follow orders until final; exit 0 if all COMPLETED", WAIT)
    config_arg(p)
    p.add_argument("ids", nargs="+", metavar="ID", help="Runa order IDs (O-...)")
    p.add_argument(
        "--timeout",
        type=duration,
        metavar="DURATION",
        help="give up after this long, e.g. 90s or 10m, and exit 1"
        " (default: no limit, wait until every order has ended)",
    )
    p = command("simulate", "serve the bundled Runa API simulator", sim_cli.DESCRIPTION)
    sim_cli.add_arguments(p)
    p = command("demo", "simulator + daemon + webhook receiver in a temp dir", DEMO)
    p.add_argument(
        "--orders", type=int, default=6, help="how many orders to follow (default: %(default)s)"
    )
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
