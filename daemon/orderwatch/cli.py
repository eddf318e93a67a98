"""The command line. The only place that prints for people and picks exit codes:
0 success, 1 runtime failure, 2 usage or config error. No traceback for a user mistake."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from orderwatch import __version__
from orderwatch.errors import ConfigError, OrderwatchError, UsageError
from orderwatch.settings import Settings

Handler = Callable[[argparse.Namespace], int]


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help="config file (default: $ORDERWATCH_CONFIG, else /etc/orderwatch/orderwatch.yaml)",
    )


def _duration(value: str) -> float:
    from orderwatch.durations import parse_duration

    try:
        return parse_duration(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orderwatch",
        description="Follow Runa orders until they are final; write and announce the result.",
    )
    parser.add_argument("--version", action="version", version=f"orderwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("run", help="run the daemon in the foreground")
    _config_arg(p)
    p = sub.add_parser("check-config", help="validate the config; exit 2 when invalid")
    _config_arg(p)
    p = sub.add_parser("add", help="enqueue order IDs (daemon running or not)")
    _config_arg(p)
    p.add_argument("ids", nargs="+", metavar="ID")
    p = sub.add_parser("status", help="counts by state, or each order's state")
    _config_arg(p)
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("replay", help="deliver orders' final events again, same event id")
    _config_arg(p)
    p.add_argument("ids", nargs="+", metavar="ID")
    p = sub.add_parser("wait", help="follow orders until final; exit 0 if all COMPLETED")
    _config_arg(p)
    p.add_argument("ids", nargs="+", metavar="ID")
    p.add_argument(
        "--timeout", type=_duration, metavar="DURATION", help="give up waiting after this long"
    )
    from orderwatch import simulator

    p = sub.add_parser("simulate", help="serve the bundled Runa API simulator")
    simulator.add_arguments(p)
    p = sub.add_parser("demo", help="simulator + daemon + webhook receiver in a temp dir")
    p.add_argument("--orders", type=int, default=6, help="how many orders to follow")
    from orderwatch import verify

    _config_arg(verify.add_parser(sub))
    return parser


def load(args: argparse.Namespace, *, delivers: bool = False) -> Settings:
    """The config; `delivers` (commands that build the sinks) also imports the callbacks."""
    from orderwatch.config import load_settings, resolve_config_path

    path = resolve_config_path(args.config, os.environ)
    return load_settings(path, os.environ, import_callbacks=delivers)


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
    from orderwatch import commands
    from orderwatch.verify import run_verify

    return {
        "run": commands.run,
        "check-config": commands.check_config,
        "add": commands.add,
        "status": commands.status,
        "replay": commands.replay,
        "wait": commands.wait,
        "simulate": commands.simulate,
        "demo": commands.demo,
        "verify": run_verify,
    }


def split_ids(ids: Sequence[str]) -> tuple[list[str], str | None]:
    """(valid IDs without duplicates, one error line naming the invalid ones or None)."""
    from orderwatch.ids import is_valid_order_id, quote_for_error

    bad = [i for i in ids if not is_valid_order_id(i)]
    good = list(dict.fromkeys(i for i in ids if is_valid_order_id(i)))
    if not bad:
        return good, None
    shown = ", ".join(quote_for_error(b) for b in bad[:5])
    more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
    return good, f"invalid order id: {shown}{more}"


def need_valid_ids(ids: Sequence[str]) -> list[str]:
    """The IDs as given, or a UsageError naming the invalid ones."""
    good, error = split_ids(ids)
    if error:
        raise UsageError(error)
    return good
