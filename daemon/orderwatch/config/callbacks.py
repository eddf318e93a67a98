"""Python callbacks named in the config (`package.module:function`): the one `Callback` type,
and how a spec becomes the callable it names."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from orderwatch.config.sink_ids import callback_spec_problem
from orderwatch.core.errors import UsageError

# Called once per final event with the event as a dict (see delivery.sinks.callback).
Callback = Callable[[dict[str, Any]], Awaitable[Any]]


def load_callable(spec: str) -> Callback:
    """Import "package.module:function" (the function part may be dotted: "mod:Class.method").
    Raises UsageError naming the spec when it is malformed, missing or not async."""
    func, problem = _load(spec)
    if problem:
        raise UsageError(f"callback {spec!r}: {problem}")
    return func  # type: ignore[return-value]


def load_problem(spec: str) -> str | None:
    """Why `spec` cannot be loaded (imports it), or None: for the config's located errors."""
    return _load(spec)[1]


def _load(spec: str) -> tuple[Callback | None, str | None]:
    if problem := callback_spec_problem(spec):
        return None, problem
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # any error importing user code is a config problem
        return None, f"cannot import {module_name}: {type(e).__name__}: {e}"
    func: Any = module
    for part in attr.split("."):
        func = getattr(func, part, None)
        if func is None:
            return None, f"module {module_name} has no {attr}"
    if not is_async_callable(func):
        return None, "must be an async function (async def)"
    return func, None


def is_async_callable(func: Any) -> bool:
    """True for async functions, partials of them, and objects with an async __call__."""
    return inspect.iscoroutinefunction(func) or (
        callable(func) and inspect.iscoroutinefunction(type(func).__call__)
    )
