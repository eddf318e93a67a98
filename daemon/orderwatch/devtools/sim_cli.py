"""`orderwatch simulate`'s options: what they mean, their defaults, and the SimOptions they
make."""

from __future__ import annotations

import argparse

from orderwatch.config.durations import parse_duration
from orderwatch.devtools.pusher import add_push_arguments, push_options_from_args
from orderwatch.devtools.simulator import Faults, SimOptions

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
_NOT_FOUND = SimOptions.not_found_prefix
DESCRIPTION = f"""\
Serve a stand-in for Runa's order API, to try orderwatch without a Runa account.
Point the config at it:  runa.base_url: http://{DEFAULT_HOST}:{DEFAULT_PORT}/v2
(--host and --port change the address).

GET /v2/order/ID answers PROCESSING until --complete-after has passed since the
order was first asked for, then its final body: COMPLETED, or FAILED for a
--fail-ratio share of the IDs. IDs that start with {_NOT_FOUND} answer 404 not_found
(an order Runa does not know). GET /v2/ping answers pong.

API key: with --api-key KEY only requests whose X-Api-Key is KEY are answered
(the others get 401); without it any key is accepted. The --rate-* options
answer that share of requests with a fault instead."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host", default=DEFAULT_HOST, help="address to listen on (default: %(default)s)"
    )
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port to listen on (default: %(default)s)"
    )
    p.add_argument(
        "--api-key",
        metavar="KEY",
        help="answer 401 unless X-Api-Key equals this (default: none, any key is accepted)",
    )
    p.add_argument(
        "--complete-after",
        default="3s",
        metavar="DURATION",
        help="orders are final this long after they are first asked for (default: %(default)s)",
    )
    p.add_argument(
        "--fail-ratio",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of orders that end FAILED, 0 to 1 (default: %(default)s)",
    )
    p.add_argument(
        "--latency",
        default="0s",
        metavar="DURATION",
        help="added to every answer (default: %(default)s)",
    )
    for name, what in (
        ("429", "with 429 Too Many Requests"),
        ("5xx", "with 500 Internal Server Error"),
        ("timeout", f"only after {Faults.hang_s:g} s (a timeout)"),
        ("malformed", "with HTML or another order's body"),
        ("reset", "by resetting the connection"),
    ):
        p.add_argument(
            f"--rate-{name}",
            type=float,
            default=0.0,
            metavar="SHARE",
            help=f"share of requests answered {what} (default: %(default)s)",
        )
    p.add_argument(
        "--seed", type=int, help="seed of the fault draws, for a repeatable run (default: random)"
    )
    add_push_arguments(p)
    p.add_argument(
        "--history",
        type=int,
        default=0,
        metavar="N",
        help="older final orders in the account's list (default: %(default)s)",
    )


def options_from_args(args: argparse.Namespace) -> SimOptions:
    faults = Faults(
        latency=parse_duration(args.latency),
        rate_429=args.rate_429,
        rate_5xx=args.rate_5xx,
        rate_timeout=args.rate_timeout,
        rate_malformed=args.rate_malformed,
        rate_reset=args.rate_reset,
    )
    return SimOptions(
        api_key=args.api_key,
        complete_after=parse_duration(args.complete_after),
        fail_ratio=args.fail_ratio,
        faults=faults,
        seed=args.seed,
        push=push_options_from_args(args),
        history=args.history,
    )
