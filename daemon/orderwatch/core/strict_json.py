"""JSON as RFC 8259 has it, for bodies from the network: whatever is built from a body this
accepts serializes as JSON again."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any


def _finite(text: str) -> float:
    """1e400 would be inf, and the event built from it would say Infinity: not JSON."""
    if not math.isfinite(value := float(text)):
        raise ValueError("number out of range")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


# One decoder's C scanner, built once and called directly: json.loads with these hooks builds
# a decoder per call, and JSONDecoder.decode wraps the scanner in Python calls and regexes.
_DECODER = json.JSONDecoder(parse_float=_finite, parse_constant=_no_constant)
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined] # set by JSONDecoder.__init__, not in typeshed
_WS = " \t\n\r"  # JSON's whitespace, all of it
NOT_JSON = (ValueError, UnicodeDecodeError, RecursionError)  # what strict_json raises


def strict_json(body: bytes) -> Any:
    """A UTF-8 JSON body as RFC 8259 has it: no NaN or Infinity, no number beyond a float,
    so whatever is built from it serializes as JSON again. Raises one of NOT_JSON."""
    text = body.decode("utf-8")
    start = len(text) - len(text.lstrip(_WS))
    try:
        data, end = _SCAN(text, start)
    except StopIteration:  # the scanner's word for "no JSON value here"
        raise ValueError("not a JSON value") from None
    if end != len(text) and text[end:].strip(_WS):
        raise ValueError("extra data after the JSON value")
    return data


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


_UNIQUE = json.JSONDecoder(
    parse_float=_finite, parse_constant=_no_constant, object_pairs_hook=_unique
)


def strict_json_unique(body: bytes) -> Any:
    """`strict_json`, and an object that names a key twice is not accepted either (which
    of the two would count is the parser's guess). Slower: for bodies read now and then."""
    return _UNIQUE.decode(body.decode("utf-8"))  # its whitespace is JSON's four characters
