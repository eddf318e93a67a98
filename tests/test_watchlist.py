"""Watchlist parsing: valid IDs kept in order, every other line a located problem, hostile
files handled without an exception and without holding a huge file whole."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from orderwatch.intake.watchlist import (
    MAX_PROBLEMS,
    ReadState,
    iter_watchlist,
    read_watchlist,
)

REPO = Path(__file__).resolve().parents[1]


def parse(tmp_path: Path, content: bytes) -> tuple[list[str], list[str]]:
    """(IDs, rendered problems with the file shown as 'wl')."""
    path = tmp_path / "wl"
    path.write_bytes(content)
    result = read_watchlist(path)
    return result.ids, [str(p).replace(str(path), "wl") for p in result.problems]


def test_comments_blank_lines_and_whitespace(tmp_path: Path) -> None:
    """'#' starts a comment anywhere; blank lines and surrounding whitespace are ignored; IDs
    keep file order; CRLF endings and a last line without a newline are fine."""
    ids, problems = parse(
        tmp_path,
        b"# header\n\nO-1\n   O-2\t# why\r\n\t\n#O-3\nabc_DEF-9#x\nO-4",
    )
    assert ids == ["O-1", "O-2", "abc_DEF-9", "O-4"]
    assert problems == []


def test_a_byte_order_mark_is_not_part_of_the_first_id(tmp_path: Path) -> None:
    """Editors on Windows save UTF-8 with a BOM; the first ID must not be rejected for it. A BOM
    anywhere else is still an invalid character."""
    ids, problems = parse(tmp_path, b"\xef\xbb\xbfO-1\nO-2\n\xef\xbb\xbfO-3\n")
    assert ids == ["O-1", "O-2"]
    assert problems == ["wl:3: invalid order id '\\ufeffO-3'"]


def test_hostile_lines_reported_exactly(tmp_path: Path) -> None:
    """Path tricks, separators, a 10 KB line, NUL, non-UTF-8 bytes and control characters are
    each `file:line: invalid order id ...`, quoted safely; the valid lines around them count.
    (Two files: past MAX_PROBLEMS lines a file's problems are only counted.)"""
    ids, problems = parse(
        tmp_path,
        b"O-A\n../../etc/passwd\na/b\n" + b"Z" * 10240 + b"\nO-\x00B\nO-\xff\xfeC\nO-F\n",
    )
    assert ids == ["O-A", "O-F"]
    assert problems == [
        "wl:2: invalid order id '../../etc/pa…'",
        "wl:3: invalid order id 'a/b'",
        f"wl:4: invalid order id '{'Z' * 12}…' (longer than 4096 bytes)",
        "wl:5: invalid order id 'O-\\x00B'",
        "wl:6: invalid order id 'O-\ufffd\ufffdC' (not UTF-8)",
    ]
    ids, problems = parse(
        tmp_path,
        b"\x1b[31mO-D\n"
        + "O-\u202eE\n".encode()  # a right-to-left override
        + b"O E\n-O\nO-G\n",
    )
    assert ids == ["O-G"]
    assert problems == [
        "wl:1: invalid order id '\\x1b[31mO-D'",
        "wl:2: invalid order id 'O-\\u202eE'",
        "wl:3: invalid order id 'O E'",
        "wl:4: invalid order id '-O'",
    ]


def test_id_length_limit(tmp_path: Path) -> None:
    """128 characters is an ID; 129 is not, and the message shows a shortened quote."""
    ok, bad = "A" * 128, "B" * 129
    ids, problems = parse(tmp_path, f"{ok}\n{bad}\n".encode())
    assert ids == [ok]
    assert problems == [f"wl:2: invalid order id '{'B' * 12}…'"]


def test_long_comment_is_not_an_error(tmp_path: Path) -> None:
    """A comment may be longer than the line limit: only the part before '#' is judged."""
    ids, problems = parse(tmp_path, b"O-1  # " + b"c" * 20000 + b"\n#" + b"d" * 9000 + b"\nO-2\n")
    assert ids == ["O-1", "O-2"] and problems == []


def test_bytes_only_in_a_comment_are_fine(tmp_path: Path) -> None:
    """Non-UTF-8 bytes after '#' do not make the line invalid."""
    ids, problems = parse(tmp_path, b"O-1 # caf\xe9\n")
    assert ids == ["O-1"] and problems == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "cannot read watchlist: No such file or directory"),
        (lambda p: p.mkdir(), "cannot read watchlist: Is a directory"),
        (lambda p: os.mkfifo(p), "cannot read watchlist: not a regular file"),
    ],
)
def test_unreadable_file_is_a_problem_not_an_exception(
    tmp_path: Path, make: Callable[[Path], object], message: str
) -> None:
    """A missing file, a directory or a FIFO (which would block a plain open) is one problem."""
    path = tmp_path / "wl"
    make(path)
    result = read_watchlist(path)
    assert result.ids == []
    assert [str(p) for p in result.problems] == [f"{path}: {message}"]


def test_problems_capped_per_file(tmp_path: Path) -> None:
    """A file of garbage gives at most MAX_PROBLEMS lines, then one count of the rest."""
    ids, problems = parse(tmp_path, b"bad line\n" * (MAX_PROBLEMS + 50) + b"O-1\n")
    assert ids == ["O-1"]
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[-1] == "wl: 50 more invalid lines not shown"


@pytest.mark.slow
def test_large_file_streams_in_bounded_memory(tmp_path: Path) -> None:
    """200,000 IDs pass through iter_watchlist (which the daemon streams into the store)
    without the whole list ever existing: peak memory stays far below the full list's."""
    path = tmp_path / "big"
    with path.open("w") as f:
        f.writelines(f"O-01H5WQGHKCBB85MQFM{i:08d}\n" for i in range(200_000))
    tracemalloc.start()
    try:
        state = ReadState()
        count = sum(1 for _ in iter_watchlist(path, state))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 200_000 and state.problems == []
    assert peak < 4 * 1024 * 1024  # the full list of 200,000 such strings is ~18 MiB


def test_iter_watchlist_is_lazy(tmp_path: Path) -> None:
    """iter_watchlist yields before reading the whole file (the daemon streams it into the
    store)."""
    path = tmp_path / "wl"
    path.write_text("O-1\nbad/1\nO-2\n")
    state = ReadState()
    it = iter_watchlist(path, state)
    assert next(it) == "O-1" and state.problems == []
    assert list(it) == ["O-2"] and len(state.problems) == 1


def test_example_watchlist_is_clean() -> None:
    """config/watchlist.example.txt has IDs and no problems."""
    result = read_watchlist(REPO / "config" / "watchlist.example.txt")
    assert len(result.ids) == 2 and result.problems == []


def test_a_file_that_is_no_watchlist_is_quoted_a_few_characters_of_a_few_lines(
    tmp_path: Path,
) -> None:
    """A watchlist path pointing at /etc/shadow logged the first 40 characters of every line,
    hashes included. Quotes stop at 12 characters, and after the first 5 invalid lines of a
    file the rest are only counted."""
    lines = [f"user{i}:$6$s4ltS4lt$H4shH4shH4shH4sh{i:02d}:19000:0:99999:7:::" for i in range(9)]
    ids, problems = parse(tmp_path, "".join(f"{line}\n" for line in lines).encode() + b"O-1\n")
    assert ids == ["O-1"]
    assert problems == [
        *(f"wl:{i + 1}: invalid order id '{lines[i][:12]}…'" for i in range(5)),
        "wl: 4 more invalid lines not shown",
    ]
    assert not any("H4sh" in p for p in problems)
