"""structlog, configured once: console lines on a terminal, JSON lines otherwise.

Redaction is a processor, not a habit: `core.redact.REDACTOR` runs on every line, whoever
logged it (stdlib loggers of aiohttp and asyncio go through the same chain). It runs last
before the renderer, after exceptions have been turned into text or dicts, so exception
messages pass it too."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer

from orderwatch.core.redact import REDACTOR

_HANDLER_MARK = "_orderwatch_handler"


def _pre_chain() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _render_chain(console: bool, colors: bool) -> list[Any]:
    """Exceptions to text or dicts, then redaction, then the renderer."""
    if console:
        return [
            structlog.processors.format_exc_info,  # a string, so the redactor sees it
            REDACTOR,
            structlog.dev.ConsoleRenderer(colors=colors),
        ]
    return [
        # Never dict_tracebacks: it renders frame locals, which can hold secrets.
        structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
        REDACTOR,
        structlog.processors.JSONRenderer(),
    ]


def _install_root_handler(handler: logging.Handler, level: str) -> None:
    """Replace our previous handler (not other people's), so a second call is a no-op."""
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def configure_logging(fmt: str, level: str, stream: TextIO | None = None) -> None:
    """Idempotent. `fmt` is auto | json | console (auto: console on a TTY); `stream` is
    sys.stderr at call time when not given. stdlib loggers come out the same way."""
    stream = stream if stream is not None else sys.stderr
    if fmt not in ("auto", "json", "console"):
        raise ValueError(f"logging format must be auto, json or console, not {fmt!r}")
    tty = stream.isatty()
    console = fmt == "console" or (fmt == "auto" and tty)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_pre_chain(),
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *_render_chain(console, colors=tty),
            ],
        )
    )
    _install_root_handler(handler, level)
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
        # Off so that a reconfiguration (tests, `demo`) reaches loggers already created.
        cache_logger_on_first_use=False,
    )
