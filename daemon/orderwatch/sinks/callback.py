"""Python callbacks: `package.module:function` from config, or callables passed in code.
Each gets the event as a dict: {"id": <event id>, "type", "timestamp", "data"}."""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any

from orderwatch.errors import UsageError
from orderwatch.sinks.base import AttemptResult
from orderwatch.store.base import EventRecord

Callback = Callable[[dict[str, Any]], Awaitable[Any]]


def load_callable(spec: str) -> Callback:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"callback {spec!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # an import error in user code is a config problem
        raise UsageError(f"callback {spec!r}: cannot import {module_name}: {e}") from None
    func: Any = module
    for part in attr.split("."):
        func = getattr(func, part, None)
        if func is None:
            raise UsageError(f"callback {spec!r}: {module_name} has no {attr}")
    if not inspect.iscoroutinefunction(func):
        raise UsageError(f"callback {spec!r}: must be an async function")
    return func  # type: ignore[no-any-return]


def callable_name(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '?')}:{getattr(func, '__qualname__', repr(func))}"


class CallbackSink:
    def __init__(self, func: Callback, retry_schedule_s: tuple[float, ...]) -> None:
        self.func = func
        self.id = f"callback:{callable_name(func)}"
        self.retry_schedule_s = retry_schedule_s
        self.max_concurrency = 8

    async def attempt(self, event: EventRecord) -> AttemptResult:
        payload = {"id": event.event_id, **json.loads(event.body)}
        try:
            await self.func(payload)
        except Exception as e:
            return AttemptResult(False, f"raised {type(e).__name__}")
        return AttemptResult(True, "ok")

    async def close(self) -> None:
        return None
