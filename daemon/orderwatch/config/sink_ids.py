"""Sink ids, apart from the sinks (the config loader checks them without importing aiohttp).

Sink ids are stored with every queued delivery, so they must stay the same across restarts
and must not carry secrets (they appear in logs and `status`):
`webhook:<host>:<sha256(url)[:16]>`, `command:<basename of argv[0]>:<sha256(argv)[:16]>`,
`callback:<package.module:function>`."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from urllib.parse import urlsplit


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def webhook_sink_id(url: str) -> str:
    """Host for readability, a hash for identity: no path, query or userinfo in logs."""
    return f"webhook:{urlsplit(url).hostname or '?'}:{short_hash(url)}"


def command_sink_id(argv: Sequence[str]) -> str:
    return f"command:{os.path.basename(argv[0])}:{short_hash(json.dumps(list(argv)))}"


def callback_sink_id(name: str) -> str:
    return f"callback:{name}"


def callback_spec_problem(spec: str) -> str | None:
    """Why `spec` is not "package.module:function" in shape (None when it is)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name.strip() or not attr.strip():
        return "expected 'package.module:function'"
    return None
