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


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are all different: with a key twice, readers disagree on what it
    says (the last value wins here, the first elsewhere), so neither reading is trusted."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in an object")
    return obj


# One decoder's C scanner, built once and called directly: json.loads with these hooks builds
# a decoder per call, and JSONDecoder.decode wraps the scanner in Python calls and regexes.
_DECODER = json.JSONDecoder(
    parse_float=_finite, parse_constant=_no_constant, object_pairs_hook=_unique_keys
)
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined] # set by JSONDecoder.__init__, not in typeshed
_WS = " \t\n\r"  # JSON's whitespace, all of it
NOT_JSON = (ValueError, UnicodeDecodeError, RecursionError)  # what strict_json raises
# Arrays and objects inside one another, the body itself the first level. Runa's orders nest
# a handful deep; without a bound, a body the parser took (it stops near the recursion limit)
# could be too deep for json.dumps a few frames further down, in the event built from it.
MAX_DEPTH = 64


def strict_json(body: bytes) -> Any:
    """A UTF-8 JSON body as RFC 8259 has it: no NaN or Infinity, no number beyond a float,
    nested at most MAX_DEPTH levels, so whatever is built from it serializes as JSON again;
    no key twice in one object. Raises one of NOT_JSON."""
    text = body.decode("utf-8")
    start = len(text) - len(text.lstrip(_WS))
    try:
        data, end = _SCAN(text, start)
    except StopIteration:  # the scanner's word for "no JSON value here"
        raise ValueError("not a JSON value") from None
    if end != len(text) and text[end:].strip(_WS):
        raise ValueError("extra data after the JSON value")
    # Each level takes two characters and one bracket: most bodies are below either count.
    if (
        len(text) > 2 * MAX_DEPTH
        and text.count("[") + text.count("{") > MAX_DEPTH
        and _deeper_than(data, MAX_DEPTH)
    ):
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    return data


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels in `value` (level by level,
    without recursion)."""
    level = [value] if isinstance(value, dict | list) else []
    for _ in range(limit):
        if not level:
            return False
        level = [
            v
            for c in level
            for v in (c.values() if isinstance(c, dict) else c)
            if isinstance(v, dict | list)
        ]
    return bool(level)
