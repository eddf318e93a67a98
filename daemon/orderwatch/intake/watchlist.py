"""Watchlist files: one order ID per line, `#` starts a comment, blank lines are ignored. A bad
line is a located problem and is skipped; the rest of the file still counts. Hostile input
(huge lines, binary, path tricks, a FIFO) never reaches anything but this parser, and a file
of a million lines streams through it without being held whole."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from orderwatch.core.errors import Problem
from orderwatch.core.files import open_regular
from orderwatch.core.ids import ORDER_ID_RE, quote_for_error

MAX_LINE = 4096  # bytes; a longer line is invalid and is never held whole
# A watchlist path may name a file that is no watchlist (/etc/shadow): its lines are quoted in
# logs, so only the first few lines of a file, and only a few characters of each.
MAX_PROBLEMS = 5  # per file and read: past this, one count of the rest
QUOTE_CHARS = 12
# The common case in one C-level match on the raw bytes: an ID, maybe spaces, maybe a newline.
_PLAIN_LINE = re.compile(rb"[ \t]*(" + ORDER_ID_RE.pattern.encode() + rb")[ \t]*\r?\n?")


@dataclass
class ReadState:
    """What a read met besides IDs."""

    problems: list[Problem] = field(default_factory=list)
    failed: bool = False  # the file could not be read to its end
    held_tail: bool = False  # a last line without a newline was left unread (`hold_tail`)


@dataclass
class WatchlistResult:
    ids: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def read_watchlist(path: Path) -> WatchlistResult:
    """The valid IDs of a watchlist in file order, and its problems; never raises for bad
    content or an unreadable file."""
    state = ReadState()
    return WatchlistResult(list(iter_watchlist(path, state)), state.problems)


def iter_watchlist(
    path: Path,
    state: ReadState,
    *,
    hold_tail: bool = False,
    open_file: Callable[[Path], io.BufferedReader] = open_regular,
) -> Generator[str, None, None]:
    """The valid IDs of a watchlist, one at a time; problems are appended to
    `state.problems` as they are met (at most MAX_PROBLEMS lines, then a count).
    `hold_tail`: a last line without a newline may be an append caught half-way ("O-12" of
    "O-123456\n"), so it is left unread and `state.held_tail` says so."""
    name, reported, skipped, problems = str(path), 0, 0, state.problems
    try:
        with open_file(path) as f:
            for lineno, (raw, whole) in enumerate(_lines(f), 1):
                if hold_tail and whole and not raw.endswith(b"\n"):
                    state.held_tail = True
                    break
                if whole and (m := _PLAIN_LINE.fullmatch(raw)):
                    yield m.group(1).decode("ascii")
                    continue
                order_id, message = _classify(raw, whole)
                if order_id:
                    yield order_id
                elif message and reported < MAX_PROBLEMS:
                    reported += 1
                    problems.append(Problem(name, lineno, None, message))
                elif message:
                    skipped += 1
    except OSError as e:
        state.failed = True
        problems.append(Problem(name, None, None, f"cannot read watchlist: {e.strerror or e}"))
    if skipped:
        problems.append(Problem(name, None, None, f"{skipped} more invalid lines not shown"))


_BOM = b"\xef\xbb\xbf"


def _lines(f: io.BufferedReader) -> Iterator[tuple[bytes, bool]]:
    """Each line as (its first MAX_LINE + 1 bytes at most, whether that is the whole line). A
    UTF-8 byte order mark at the start of the file is not part of the first line."""
    if f.peek(3)[:3] == _BOM:
        f.read(3)
    while raw := f.readline(MAX_LINE + 1):
        if len(raw) <= MAX_LINE or raw.endswith(b"\n"):
            yield raw, True
            continue
        while (rest := f.readline(1 << 16)) and not rest.endswith(b"\n"):
            pass  # skip the rest of an over-long line without keeping it
        yield raw, False


def _classify(raw: bytes, whole: bool) -> tuple[str | None, str | None]:
    """(the ID, None) for a valid line, (None, None) for a blank or comment line, else
    (None, the problem's message)."""
    hash_at = raw.find(b"#")
    if hash_at >= 0:
        raw, whole = raw[:hash_at], True  # whatever follows '#' is a comment, however long
    try:
        text, note = raw.decode("utf-8").strip(), ""
    except UnicodeDecodeError:
        text, note = raw[:60].decode("utf-8", "replace").strip(), " (not UTF-8)"
    if not whole:
        shown = quote_for_error(text[:QUOTE_CHARS] + "…", QUOTE_CHARS + 1)
        return None, f"invalid order id {shown} (longer than 4096 bytes)"
    if not text:
        return None, None
    if not note and ORDER_ID_RE.fullmatch(text):
        return text, None
    return None, f"invalid order id {quote_for_error(text, QUOTE_CHARS)}{note}"
