"""Redaction is a processor: whatever a developer logs, secrets and payout links go."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from orderwatch.logs import REDACTOR, configure_logging

SECRET = "whsec_very-secret-value"
KEY = "xx.api-key-secret"
PAYOUT = "https://spend.runa.io/abc123-redeem-me"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    REDACTOR.add_secret(SECRET)
    REDACTOR.add_secret(KEY)
    REDACTOR.add_safe_url_prefix("https://playground.runa.io/v2")
    configure_logging("json", "debug", stream=out)
    yield out
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_secrets_and_payout_urls_removed_everywhere(stream: io.StringIO) -> None:
    """Registered secrets and unknown URLs vanish from values, nested values and messages;
    safe URLs stay; payload-bearing keys are dropped whole."""
    log = structlog.get_logger("t")
    structlog.contextvars.bind_contextvars(order_id="O-1")
    try:
        log.info(
            "x",
            note=f"key={KEY}",
            nested={"a": [PAYOUT, {"b": SECRET}]},
            base="https://playground.runa.io/v2/order/O-1",
            data={"ok": 1},
        )
    finally:
        structlog.contextvars.clear_contextvars()
    (line,) = lines(stream)
    text = json.dumps(line)
    assert KEY not in text and SECRET not in text and PAYOUT not in text
    assert line["order_id"] == "O-1" and line["base"] == "https://playground.runa.io/v2/order/O-1"
    assert line["data"] == "[REDACTED]" and line["note"] == "key=[REDACTED]"


def test_exceptions_and_stdlib_loggers_redacted(stream: io.StringIO) -> None:
    """Exception text and stdlib loggers (aiohttp's) pass the same redaction, no locals."""
    log = structlog.get_logger("t")
    secret_local = SECRET  # noqa: F841 - a local that must not be rendered
    try:
        raise RuntimeError(f"boom {PAYOUT} {KEY}")
    except RuntimeError:
        log.exception("failed")
    logging.getLogger("aiohttp.client").warning("retrying %s with %s", PAYOUT, KEY)
    text = stream.getvalue()
    assert "boom" in text and "retrying" in text
    assert KEY not in text and SECRET not in text and PAYOUT not in text
