"""`orderwatch verify`: the command around `delivery.verify`; it reads the capture and the
secrets, and prints the verdict."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr

from orderwatch.cli.args import load
from orderwatch.config.load import resolve_config_path
from orderwatch.core.errors import UsageError
from orderwatch.delivery.verify import (
    TOLERANCE_S,
    Secret,
    Verdict,
    parse_capture,
    shown,
    span,
    verify_delivery,
)

DESCRIPTION = """\
Check a captured webhook delivery the way a receiver using the Standard Webhooks library does:
the webhook-id, webhook-timestamp and webhook-signature headers against the body's exact bytes,
for each secret, and the timestamp within 5 minutes of now.

Give the body as BODY_FILE (or on stdin) and the headers with --header; or give a whole raw
HTTP request as captured (request line, headers, blank line, body) as BODY_FILE.

Prints which signature matched which secret (named by where it came from, never its value),
the timestamp's age, and the event id, type and order id; never the rest of the payload.
Exit 0 valid, 1 invalid (with the reasons), 2 usage error (no secret, unreadable input).

example:
  orderwatch verify -c orderwatch.yaml --header 'webhook-id: evt_completed_O-1' \\
      --header 'webhook-timestamp: 1733500000' --header 'webhook-signature: v1,K5o...' body.json
  orderwatch verify --secret "$SECRET" request.http"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """The `verify` subcommand's parser (the caller adds -c/--config)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "verify",
        help="check a captured webhook delivery against the secrets",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "body_file",
        nargs="?",
        default="-",
        metavar="BODY_FILE",
        help="the body exactly as received, or a whole raw HTTP request (default: -, stdin)",
    )
    p.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="S",
        help="a 'whsec_...' secret to try; repeat for a rotation"
        " (default: every webhook secret of the config)",
    )
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a header as received; repeat (default: none, or a raw request's own headers;"
        " a flag overrides the request's header of that name)",
    )
    return p


def run_verify(args: argparse.Namespace) -> int:
    """Print the verdict; 0 valid, 1 invalid. Usage problems raise UsageError (exit 2)."""
    secrets = secrets_from_flags(args.secret) if args.secret else _config_secrets(args)
    capture = parse_capture(_read_input(args.body_file), args.header)
    verdict = verify_delivery(capture, secrets, time.time())
    print("\n".join(render(verdict)))
    return 0 if verdict.valid else 1


def secrets_from_flags(values: Sequence[str]) -> list[Secret]:
    return [Secret(f"--secret #{n}", SecretStr(v)) for n, v in enumerate(values, 1)]


def _config_secrets(args: argparse.Namespace) -> list[Secret]:

    path = resolve_config_path(args.config, os.environ)
    if not args.config and not os.environ.get("ORDERWATCH_CONFIG") and not path.exists():
        raise UsageError(f"no secret: give --secret, or -c a config with webhooks ({path}: none)")
    found: dict[str, Secret] = {}
    for i, hook in enumerate(load(args).webhooks):
        if hook.secret is not None:
            key = "secret_file" if hook.secret_file is not None else "secret"
            label = f"webhooks[{i}].{key}"
            found.setdefault(hook.secret.get_secret_value(), Secret(label, hook.secret))
        for k, s in enumerate(hook.secrets):
            found.setdefault(s.get_secret_value(), Secret(f"webhooks[{i}].secrets[{k}]", s))
    if not found:
        raise UsageError(f"no secret: {path} has no webhooks; give --secret")
    return list(found.values())


def _read_input(name: str) -> bytes:
    if name == "-":
        if sys.stdin.isatty():
            raise UsageError("no BODY_FILE, and stdin is a terminal: give a file or pipe one in")
        return sys.stdin.buffer.read()
    try:
        with open(name, "rb") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"cannot read {name}: {e.strerror or type(e).__name__}") from None


def render(v: Verdict) -> list[str]:
    """The report, verdict first: each problem, each match, then the event and its age."""
    lines = [f"invalid: {p}" for p in v.problems] or ["valid"]
    verb = "matched" if v.valid else "would match"
    for m in v.matches:
        lines.append(
            f"signature {m.signature} of {v.signatures} {verb} secret #{m.secret} ({m.label})"
        )
    if v.compared and not v.matches:
        lines.append(f"tried {len(v.tried)} secret(s): {', '.join(v.tried)}")
    if v.valid:  # the first match on the verdict's line
        lines = [f"valid: {lines[1]}", *lines[2:]]
    lines.append(f"event id:  {shown(v.event_id)}")
    lines.append(f"type:      {shown(v.event_type)}")
    lines.append(f"order id:  {shown(v.order_id)}")
    if v.timestamp is not None and v.age_s is not None:
        at = datetime.fromtimestamp(v.timestamp, UTC).isoformat().replace("+00:00", "Z")
        ago = f"{span(v.age_s)} ago" if v.age_s >= 0 else f"{span(-v.age_s)} in the future"
        lines.append(f"timestamp: {v.timestamp} ({at}, {ago}; tolerance {span(TOLERANCE_S)})")
    lines += [f"note: {n}" for n in v.notes]
    return lines
