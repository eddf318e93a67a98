"""What every command shares: the config option and its loading, durations, order IDs and
logging for commands."""

from __future__ import annotations

import argparse
import os
from collections.abc import Collection, Sequence

from orderwatch.config.durations import parse_duration
from orderwatch.config.load import load_settings, resolve_config_path
from orderwatch.config.models import Settings
from orderwatch.config.secrets import register_secrets
from orderwatch.core.errors import UsageError
from orderwatch.core.ids import is_valid_order_id, quote_for_error
from orderwatch.ops.logs import configure_logging


def config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help="config file (default: $ORDERWATCH_CONFIG, else /etc/orderwatch/orderwatch.yaml)",
    )


def duration(value: str) -> float:

    try:
        return parse_duration(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def load(
    args: argparse.Namespace,
    *,
    delivers: bool = False,
    checks: bool = False,
    unused: Collection[str] = (),
) -> Settings:
    """The config; `delivers` (commands that build the sinks) also imports the callbacks,
    `checks` (check-config) also opens the watchlists; the secrets in `unused` are neither
    expanded nor read (config.unused_secrets: the command never uses them)."""

    path = resolve_config_path(args.config, os.environ)
    return load_settings(
        path, os.environ, import_callbacks=delivers, check_files=checks, unused_secrets=unused
    )


def split_ids(ids: Sequence[str]) -> tuple[list[str], str | None]:
    """(valid IDs without duplicates, one error line naming the invalid ones or None)."""

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


def setup_logging(settings: Settings, one_shot: bool = False) -> None:
    """One-shot commands (wait, replay) log warnings and up unless debug is asked for: their
    own output is what a person reads."""

    level = settings.logging.level
    if one_shot and level == "info":
        level = "warning"
    configure_logging(settings.logging.format, level)
    register_secrets(settings)


def source(args: argparse.Namespace) -> str:

    return str(resolve_config_path(args.config, os.environ))
