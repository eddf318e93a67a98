"""Watchlist files: one order ID per line, `#` comments, blank lines ignored. A bad line is a
located problem and is skipped; the rest of the file still counts. Hostile input (huge lines,
binary, path tricks) never reaches anything but this parser."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from orderwatch.errors import Problem
from orderwatch.ids import ORDER_ID_RE, quote_for_error

MAX_LINE = 4096
MAX_PROBLEMS = 100  # per file and read: past this, one summary line


@dataclass
class WatchlistResult:
    ids: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def read_watchlist(path: Path) -> WatchlistResult:
    """Parse a watchlist into a list; never raises for bad content or an unreadable file."""
    result = WatchlistResult()
    result.ids.extend(iter_watchlist(path, result.problems))
    return result


def iter_watchlist(path: Path, problems: list[Problem]) -> Iterator[str]:
    """The valid IDs of a watchlist, one at a time (a huge file is never held whole);
    problems are appended to `problems` as they are met."""
    name = str(path)
    reported = skipped = 0
    try:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(_lines(f), 1):
                text = _line_text(raw)
                if text is None:
                    text = raw[:60].decode("utf-8", "replace") + "…"
                elif not text:
                    continue
                elif ORDER_ID_RE.fullmatch(text):
                    yield text
                    continue
                if reported < MAX_PROBLEMS:
                    reported += 1
                    msg = f"invalid order id {quote_for_error(text)}"
                    problems.append(Problem(name, lineno, None, msg))
                else:
                    skipped += 1
    except OSError as e:
        problems.append(Problem(name, None, None, f"cannot read watchlist: {e.strerror}"))
    if skipped:
        problems.append(Problem(name, None, None, f"{skipped} more invalid lines"))


def _lines(f: BinaryIO) -> Iterator[bytes]:
    """Lines, each cut at MAX_LINE + 1 bytes: a giant line is never held whole."""
    while raw := f.readline(MAX_LINE + 1):
        if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
            while (rest := f.readline(1 << 16)) and not rest.endswith(b"\n"):
                pass
        yield raw


def _line_text(raw: bytes) -> str | None:
    """The ID text of one line ('' when blank or a comment), None when it is not text."""
    if len(raw) > MAX_LINE:
        return None
    hash_at = raw.find(b"#")
    if hash_at >= 0:
        raw = raw[:hash_at]
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
