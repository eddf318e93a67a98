"""Order IDs: the one pattern that decides what may reach the filesystem."""

from __future__ import annotations

import re

ORDER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


def is_valid_order_id(text: str) -> bool:
    """True when `text` is a whole order ID per SPEC (safe as a file name)."""
    return ORDER_ID_RE.fullmatch(text) is not None


def quote_for_error(text: str, limit: int = 40) -> str:
    """Render untrusted text for an error line: repr-escaped and shortened."""
    shown = text if len(text) <= limit else text[:limit] + "…"
    return repr(shown)
