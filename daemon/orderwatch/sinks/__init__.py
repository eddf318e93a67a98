"""Who hears about final orders: signed webhooks, commands, Python callbacks."""

from __future__ import annotations

from collections.abc import Sequence

from orderwatch.settings import Settings
from orderwatch.sinks.base import AttemptResult, Sink
from orderwatch.sinks.callback import Callback, CallbackSink, load_callable
from orderwatch.sinks.command import CommandSink
from orderwatch.sinks.webhook import WebhookSink

# Commands and callbacks have no per-sink schedule key: the webhook default, like Svix's.
DEFAULT_SCHEDULE_S = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


def build_sinks(settings: Settings, extra_callbacks: Sequence[Callback] = ()) -> list[Sink]:
    sinks: list[Sink] = [WebhookSink(w) for w in settings.webhooks]
    sinks += [
        CommandSink(argv, settings.command_timeout_s, DEFAULT_SCHEDULE_S)
        for argv in settings.commands
    ]
    funcs = [load_callable(spec) for spec in settings.callbacks] + list(extra_callbacks)
    sinks += [CallbackSink(f, DEFAULT_SCHEDULE_S) for f in funcs]
    ids = [s.id for s in sinks]
    if len(set(ids)) != len(ids):
        from orderwatch.errors import UsageError

        raise UsageError("two sinks are the same (same webhook url, command or callback)")
    return sinks


__all__ = ["AttemptResult", "Sink", "build_sinks"]
