"""`orderwatch verify`: check a captured webhook delivery against its secrets, for a person
debugging a receiver, and say why it fails.

    capture = parse_capture(raw, ["webhook-id: evt_...", ...])  # or a whole raw HTTP request
    verdict = verify_delivery(capture, secrets, now=time.time())

Signatures are computed by the signer's own library (`standardwebhooks`), per secret, so the
report can name which signature matched which secret. Secrets are named by where they came
from, never shown; of the body only the event's type and `data.id` are shown (`data` holds
payout links)."""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from orderwatch.errors import UsageError

TOLERANCE_S = 300  # the library's, both ways
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
_REQUEST_LINE = re.compile(rb"\A[A-Z]+ \S+ HTTP/1\.[01]\r?\n")
_TOKEN = re.compile(r"\A[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # an HTTP header name
_MAX_SHOWN = 128

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


@dataclass(frozen=True)
class Secret:
    label: str  # where it came from: "--secret #1", "webhooks[0].secrets[1]"
    value: SecretStr


@dataclass(frozen=True)
class Capture:
    body: bytes
    headers: dict[str, str]  # names lower-cased
    notes: tuple[str, ...] = ()  # what reading a raw request noticed


@dataclass(frozen=True)
class Match:
    signature: int  # 1-based, among the webhook-signature entries
    secret: int  # 1-based, among the secrets tried
    label: str


@dataclass(frozen=True)
class Verdict:
    problems: tuple[str, ...]  # empty: valid
    matches: tuple[Match, ...]
    signatures: int  # entries in webhook-signature
    tried: tuple[str, ...]  # labels of the secrets tried
    compared: bool  # there was an id, a timestamp and a v1 signature to compare with
    event_id: str | None
    timestamp: int | None
    age_s: float | None
    event_type: str | None
    order_id: str | None
    notes: tuple[str, ...]

    @property
    def valid(self) -> bool:
        return not self.problems


# --- reading a capture ---------------------------------------------------------------------


def parse_capture(raw: bytes, header_flags: Sequence[str] = ()) -> Capture:
    """The body and headers: a raw HTTP request is split; `--header` flags add or override."""
    headers: dict[str, str] = {}
    body, notes = raw, tuple[str, ...]()
    if _REQUEST_LINE.match(raw):
        headers, body, notes = _split_request(raw)
    for n, flag in enumerate(header_flags, 1):
        name, colon, value = flag.partition(":")
        if not colon or not _TOKEN.match(name.strip()):  # not echoed: it may hold a token
            raise UsageError(f"--header #{n} is not 'name: value'")
        headers[name.strip().lower()] = value.strip()
    return Capture(body, headers, notes)


def _split_request(raw: bytes) -> tuple[dict[str, str], bytes, tuple[str, ...]]:
    end = re.search(rb"\n\r?\n", raw)
    if end is None:
        raise UsageError("the HTTP request has no blank line after its headers")
    headers: dict[str, str] = {}
    for n, line in enumerate(raw[: end.start()].decode("latin-1").split("\n")[1:], 2):
        name, colon, value = line.rstrip("\r").partition(":")
        if not colon or not _TOKEN.match(name):
            raise UsageError(f"line {n} of the HTTP request is not a 'name: value' header")
        headers[name.lower()] = value.strip()
    body = raw[end.end() :]
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return headers, _dechunk(body), ()
    return (headers, *_by_length(body, headers.get("content-length")))


def _by_length(body: bytes, length: str | None) -> tuple[bytes, tuple[str, ...]]:
    if length is None or not length.isdigit():
        return body, ()
    want = int(length)
    if len(body) > want:
        extra = len(body) - want
        return body[:want], (f"{extra} byte(s) after the Content-Length body were ignored",)
    if len(body) < want:
        return body, (f"the body is {len(body)} bytes, Content-Length says {want}: cut?",)
    return body, ()


def _dechunk(data: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        eol = data.find(b"\n", pos)
        try:
            size = int(data[pos:eol].split(b";")[0].strip(), 16) if eol >= 0 else -1
        except ValueError:
            size = -1
        if size < 0:
            raise UsageError("the HTTP request's chunked body is malformed")
        if size == 0:
            return bytes(out)
        out += data[eol + 1 : eol + 1 + size]
        pos = eol + 1 + size
        pos += 2 if data[pos : pos + 2] == b"\r\n" else 1


# --- checking it ---------------------------------------------------------------------------


def signer(secret: Secret) -> Webhook:
    """The library's signer, after the sink's strict check: the library's decoder skips
    characters that are not base64, so a mistyped secret would sign with another key."""
    raw = secret.value.get_secret_value().removeprefix("whsec_")
    try:
        if base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True):
            return Webhook(secret.value.get_secret_value())
    except (binascii.Error, ValueError):
        pass
    raise UsageError(f"{secret.label} is not a Standard Webhooks secret ('whsec_' + base64)")


def verify_delivery(capture: Capture, secrets: Sequence[Secret], now: float) -> Verdict:
    """What a receiver with these secrets would decide at `now`, and why."""
    signers = [signer(s) for s in secrets]
    h = {k: v.strip() for k, v in capture.headers.items()}
    problems: list[str] = []
    notes = list(capture.notes)
    if missing := [name for name in HEADERS if not h.get(name)]:
        problems.append(f"missing header {', '.join(missing)}")
    event_id = h.get("webhook-id") or None
    stamp = _timestamp(h.get("webhook-timestamp"), problems)
    entries = _entries(h.get("webhook-signature", ""), problems, notes)
    age = None if stamp is None else now - stamp
    if age is not None and abs(age) > TOLERANCE_S:
        problems.append(_stale(age))
    matches: tuple[Match, ...] = ()
    compared = bool(event_id and stamp is not None and entries)
    if event_id and stamp is not None and entries:
        matches = _matches(event_id, stamp, capture.body, entries, secrets, signers)
        if not matches:
            problems.append("no signature matches: wrong secret or body changed")
            notes += _hints(event_id, stamp, capture.body, entries, secrets, signers)
    event_type, order_id = _event(capture.body, problems, notes)
    return Verdict(
        problems=tuple(problems),
        matches=matches,
        signatures=len(h.get("webhook-signature", "").split()),
        tried=tuple(s.label for s in secrets),
        compared=compared,
        event_id=event_id,
        timestamp=stamp,
        age_s=age,
        event_type=event_type,
        order_id=order_id,
        notes=tuple(notes),
    )


def _timestamp(value: str | None, problems: list[str]) -> int | None:
    if not value:
        return None
    if not value.isascii() or not value.isdigit():
        problems.append("webhook-timestamp is not whole seconds since 1970 (Unix time)")
        return None
    return int(value)


def _entries(header: str, problems: list[str], notes: list[str]) -> dict[int, str]:
    """The well-formed `v1,` entries by their 1-based place; the rest are problems or notes."""
    entries, parts, bad = {}, header.split(), False
    for n, entry in enumerate(parts, 1):
        version, comma, sig = entry.partition(",")
        where = f"webhook-signature entry {n} of {len(parts)}"
        if not comma or not version:
            bad = True
            problems.append(f"{where} is not 'version,signature'")
        elif version != "v1":
            notes.append(f"{where} is {_shown(version)}, not v1: not checked")
        elif not _is_hmac(sig):
            bad = True
            problems.append(f"{where} is not 'v1,' + base64 of a 32-byte HMAC-SHA256")
        else:
            entries[n] = entry
    if parts and not entries and not bad:
        problems.append("webhook-signature has no v1 signature")
    return entries


def _is_hmac(sig: str) -> bool:
    try:
        return len(base64.b64decode(sig, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def _matches(
    event_id: str,
    stamp: int,
    body: bytes,
    entries: dict[int, str],
    secrets: Sequence[Secret],
    signers: Sequence[Webhook],
) -> tuple[Match, ...]:
    """For each entry, the first secret whose signature it is (compared as the library does)."""
    at = datetime.fromtimestamp(stamp, UTC)
    expected = [s.sign(event_id, at, body).encode() for s in signers]
    found = []
    for n, entry in entries.items():
        for i, sig in enumerate(expected):
            if hmac.compare_digest(sig, entry.encode()):
                found.append(Match(n, i + 1, secrets[i].label))
                break
    return tuple(found)


def _hints(
    event_id: str,
    stamp: int,
    body: bytes,
    entries: dict[int, str],
    secrets: Sequence[Secret],
    signers: Sequence[Webhook],
) -> list[str]:
    """A mismatch a capture often causes itself: a newline added at the end of the body."""
    trimmed = body.rstrip(b"\r\n")
    if trimmed != body and _matches(event_id, stamp, trimmed, entries, secrets, signers):
        return ["the body without its trailing newline matches: save the body exactly as sent"]
    return []


def _stale(age: float) -> str:
    if age > 0:
        return f"stale timestamp: {_span(age)} old (more than {_span(TOLERANCE_S)})"
    return f"stale timestamp: {_span(-age)} in the future (more than {_span(TOLERANCE_S)})"


def _event(body: bytes, problems: list[str], notes: list[str]) -> tuple[str | None, str | None]:
    """The event's type and order id (`data.id`); nothing else of `data` leaves here."""
    try:
        event: Any = json.loads(body)
    except json.JSONDecodeError as e:
        problems.append(f"body is not valid JSON ({e.msg} at byte {e.pos}): cut or edited?")
        return None, None
    except ValueError:  # UnicodeDecodeError: its message would quote the bytes
        problems.append("body is not valid JSON (not UTF-8 text)")
        return None, None
    if not isinstance(event, dict):
        notes.append("the body is not an orderwatch event (not a JSON object)")
        return None, None
    data = event.get("data")
    order_id = data.get("id") if isinstance(data, dict) else None
    event_type = event.get("type")
    return (
        event_type if isinstance(event_type, str) else None,
        order_id if isinstance(order_id, str) else None,
    )


# --- the command ---------------------------------------------------------------------------


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
    from orderwatch.cli import load
    from orderwatch.config import resolve_config_path

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
    lines.append(f"event id:  {_shown(v.event_id)}")
    lines.append(f"type:      {_shown(v.event_type)}")
    lines.append(f"order id:  {_shown(v.order_id)}")
    if v.timestamp is not None and v.age_s is not None:
        at = datetime.fromtimestamp(v.timestamp, UTC).isoformat().replace("+00:00", "Z")
        ago = f"{_span(v.age_s)} ago" if v.age_s >= 0 else f"{_span(-v.age_s)} in the future"
        lines.append(f"timestamp: {v.timestamp} ({at}, {ago}; tolerance {_span(TOLERANCE_S)})")
    lines += [f"note: {n}" for n in v.notes]
    return lines


def _shown(text: str | None) -> str:
    """Untrusted text on one line: as is when short and printable, else quoted and cut."""
    if text is None:
        return "-"
    if len(text) <= _MAX_SHOWN and text.isprintable():
        return text
    return repr(text[:_MAX_SHOWN] + ("…" if len(text) > _MAX_SHOWN else ""))


def _span(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s" if s else f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s" if s % 60 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"
