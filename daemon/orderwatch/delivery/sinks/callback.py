"""Python callbacks: `package.module:function` from config, or async callables passed in code.

Each call gets one dict, the event body parsed plus its id:
    {"id": "evt_completed_O-1", "type": "order.completed", "timestamp": "2024-...Z",
     "data": {<the final order payload, or {"id", "status", "last_response"}>}}
`id` is the webhook-id: stable across retries and replays, so make the callback idempotent on
it. Returning is delivered; raising (or running past the timeout, when one is set) is retried
on the schedule. A callback is called once per event, at least once."""

from __future__ import annotations

import asyncio
import json
import re
import traceback
from collections.abc import Callable
from typing import Any

import structlog

from orderwatch.config.callbacks import Callback, is_async_callable
from orderwatch.core.errors import UsageError
from orderwatch.core.redact import REDACTED, REDACTOR
from orderwatch.delivery.sinks.base import DEFAULT_SCHEDULE_S, AttemptResult, callback_sink_id
from orderwatch.store.base import EventRecord

log = structlog.get_logger("orderwatch.sinks.callback")


def callable_name(func: Callable[..., Any]) -> str:
    """module:qualname, how callables passed in code are named (stable across restarts)."""
    target = getattr(func, "func", func)  # functools.partial
    module = getattr(target, "__module__", None) or "?"
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}:{name}"


def event_dict(event: EventRecord) -> dict[str, Any]:
    """What a callback receives: the parsed body plus "id" (the webhook-id)."""
    parsed = json.loads(event.body)
    return {"id": event.event_id, **parsed}


MAX_ERROR_CHARS = 200
MIN_QUOTED_LEAF = 4  # shorter values ("abc", "EUR") would blank out ordinary words


def error_summary(e: BaseException, data: Any) -> str:
    """`Type: message` of a callback's exception, safe to log: every string of the event's
    `data` (MIN_QUOTED_LEAF characters or more, numbers as JSON writes them) replaced, then
    the log redactor's secrets and URLs, then cut to MAX_ERROR_CHARS."""
    try:
        message = f"{type(e).__name__}: {e}"
    except Exception:  # a __str__ of the user's that raises
        message = f"{type(e).__name__}: (message cannot be shown)"
    leaves = sorted(_leaves(data), key=len, reverse=True)
    if leaves:
        message = re.sub("|".join(map(re.escape, leaves)), REDACTED, message)
    message = REDACTOR.text(message)
    return message if len(message) <= MAX_ERROR_CHARS else message[:MAX_ERROR_CHARS] + "…"


def _leaves(data: Any) -> set[str]:
    """The scalar values in `data`, as text, MIN_QUOTED_LEAF characters or more."""
    found, todo = set(), [data]
    while todo:
        value = todo.pop()
        if isinstance(value, dict):
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            text = value if isinstance(value, str) else json.dumps(value)
            if len(text) >= MIN_QUOTED_LEAF:
                found.add(text)
    return found


def _where(e: BaseException) -> str | None:
    """The line that raised, `file:line in function`: code, never a value."""
    frames = traceback.extract_tb(e.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else None


class CallbackSink:
    def __init__(
        self,
        func: Callback,
        name: str | None = None,
        *,
        retry_schedule_s: tuple[float, ...] = DEFAULT_SCHEDULE_S,
        timeout_s: float | None = None,
        max_concurrency: int = 8,
    ) -> None:
        if not is_async_callable(func):
            raise UsageError(f"callback {name or callable_name(func)}: must be an async function")
        self.func = func
        self.id = callback_sink_id(name or callable_name(func))
        self.retry_schedule_s = retry_schedule_s
        self.timeout_s = timeout_s
        self.max_concurrency = max_concurrency

    async def attempt(self, event: EventRecord) -> AttemptResult:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.func(event_dict(event))
        except TimeoutError:
            return AttemptResult(False, "timeout")
        except asyncio.CancelledError as e:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being stopped
            # The callback's own (it awaited a task that someone else cancelled): a failure.
            return self._raised(event, e)
        except (Exception, SystemExit) as e:  # sys.exit() in a callback must not end us
            return self._raised(event, e)
        return AttemptResult(True, "ok")

    def _raised(self, event: EventRecord, e: BaseException) -> AttemptResult:
        # Redacted here, not only by our log chain, which an embedding application does not
        # use. No traceback: its messages (and its chained exceptions') quote what the
        # callback was given, a card code or a PIN as readily as a payout link.
        log.warning(
            "callback.raised",
            order_id=event.order_id,
            sink=self.id,
            error_type=type(e).__name__,
            error=error_summary(e, json.loads(event.body).get("data")),
            where=_where(e),
        )
        return AttemptResult(False, f"raised {type(e).__name__}")

    async def close(self) -> None:
        return None
