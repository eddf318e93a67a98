"""structlog, configured once: console lines on a terminal, JSON lines otherwise.

Redaction is a processor, not a habit: `REDACTOR` knows every secret the config holds and
removes them, every URL not known to be safe (payout links), and the whole value of keys
that carry payloads or credentials, from every line, whoever logged it (stdlib loggers of
aiohttp and asyncio go through the same chain)."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer

REDACTED = "[REDACTED]"
REDACTED_URL = "[REDACTED-URL]"
SENSITIVE_KEYS = frozenset(
    {
        "api_key",
        "secret",
        "secrets",
        "token",
        "password",
        "authorization",
        "x-api-key",
        "payload",
        "body",
        "data",
        "dsn",
        "state_dsn",
        "headers",
    }
)
_URL = re.compile(r"https?://[^\s\"'<>\\]+", re.IGNORECASE)


class Redactor:
    """Removes registered secrets and unsafe URLs from any value, recursively."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._secret_re: re.Pattern[str] | None = None
        self._safe: tuple[str, ...] = ()

    def add_secret(self, value: str) -> None:
        if len(value) >= 4 and value not in self._secrets:
            self._secrets.add(value)
            alternatives = sorted(self._secrets, key=len, reverse=True)
            self._secret_re = re.compile("|".join(re.escape(s) for s in alternatives))

    def add_safe_url_prefix(self, prefix: str) -> None:
        if prefix and prefix not in self._safe:
            self._safe = (*self._safe, prefix)

    def _url(self, m: re.Match[str]) -> str:
        url = m.group(0)
        return url if url.startswith(self._safe) and self._safe else REDACTED_URL

    def text(self, value: str) -> str:
        if self._secret_re is not None:
            value = self._secret_re.sub(REDACTED, value)
        if "://" in value:
            value = _URL.sub(self._url, value)
        return value

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: self.item(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v) for v in value]
        if isinstance(value, bytes | bytearray):
            return REDACTED
        if isinstance(value, int | float | bool) or value is None:
            return value
        return self.text(str(value))

    def item(self, key: str, value: Any) -> Any:
        return REDACTED if key.lower() in SENSITIVE_KEYS else self.value(value)

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, v in list(event_dict.items()):
            event_dict[key] = self.item(key, v)
        return event_dict


REDACTOR = Redactor()


def _pre_chain() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure_logging(fmt: str, level: str, stream: TextIO | None = None) -> None:
    """Idempotent. `fmt` is auto | json | console; auto means console on a TTY."""
    stream = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    if console:
        renderer: Any = structlog.dev.ConsoleRenderer(colors=stream.isatty())
        exc: list[Any] = [structlog.processors.format_exc_info]  # a string, so it is redacted
    else:
        renderer = structlog.processors.JSONRenderer()
        exc = [structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))]
    final = [*exc, REDACTOR, renderer]
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_pre_chain(),
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,  # drop below-level calls before any work
            *_pre_chain(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
