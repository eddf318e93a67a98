"""`orderwatch verify`: check a captured webhook delivery against its secrets, for a person
debugging a receiver, and say why it fails.

    capture = parse_capture(raw, ["webhook-id: evt_...", ...])  # or a whole raw HTTP request
    verdict = verify_delivery(capture, secrets, now=time.time())

Signatures are computed by the signer's own library (`standardwebhooks`), per secret, so the
report can name which signature matched which secret. Secrets are named by where they came
from, never shown; of the body only the event's type and `data.id` are shown (`data` holds
payout links)."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from orderwatch.core.errors import UsageError

TOLERANCE_S = 300  # the library's, both ways
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
_REQUEST_LINE = re.compile(rb"\A[A-Z]+ \S+ HTTP/1\.[01]\r?\n")
_TOKEN = re.compile(r"\A[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # an HTTP header name
_MAX_SHOWN = 128


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
            notes.append(f"{where} is {shown(version)}, not v1: not checked")
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
        return f"stale timestamp: {span(age)} old (more than {span(TOLERANCE_S)})"
    return f"stale timestamp: {span(-age)} in the future (more than {span(TOLERANCE_S)})"


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


def shown(text: str | None) -> str:
    """Untrusted text on one line: as is when short and printable, else quoted and cut."""
    if text is None:
        return "-"
    if len(text) <= _MAX_SHOWN and text.isprintable():
        return text
    return repr(text[:_MAX_SHOWN] + ("…" if len(text) > _MAX_SHOWN else ""))


def span(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s" if s else f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s" if s % 60 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"
