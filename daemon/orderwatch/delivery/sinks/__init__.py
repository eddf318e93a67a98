"""Who hears about final orders: signed webhooks, commands, Python callbacks."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from orderwatch.config.callbacks import Callback, load_callable
from orderwatch.config.models import Settings
from orderwatch.core.errors import UsageError
from orderwatch.delivery.sinks.base import DEFAULT_SCHEDULE_S, AttemptResult, Sink
from orderwatch.delivery.sinks.callback import CallbackSink
from orderwatch.delivery.sinks.command import CommandSink
from orderwatch.delivery.sinks.webhook import WebhookSink


def build_sinks(
    settings: Settings,
    extra_callbacks: Sequence[Callback] = (),
    *,
    clock: Callable[[], float] = time.time,
) -> list[Sink]:
    """Every sink the config names, in config order, then the callables passed in code.
    Commands and callbacks share `command_timeout` and the default (Svix-like) schedule.
    Raises UsageError for a callback that cannot be loaded or two sinks that are the same."""
    sinks: list[Sink] = [WebhookSink(w, clock=clock) for w in settings.webhooks]
    sinks += [CommandSink(argv, settings.command_timeout_s) for argv in settings.commands]
    sinks += [
        CallbackSink(load_callable(spec), spec, timeout_s=settings.command_timeout_s)
        for spec in settings.callbacks
    ]
    sinks += [CallbackSink(f, timeout_s=settings.command_timeout_s) for f in extra_callbacks]
    ids = [s.id for s in sinks]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise UsageError(f"the same sink is configured twice: {', '.join(duplicates)}")
    return sinks


__all__ = [
    "DEFAULT_SCHEDULE_S",
    "AttemptResult",
    "Callback",
    "CallbackSink",
    "CommandSink",
    "Sink",
    "WebhookSink",
    "build_sinks",
    "load_callable",
]
