"""Command sink: argv from config, run without a shell, in its own process group.

The event JSON (the exact bytes a webhook gets) arrives on stdin; the environment is ours,
without the variables that hold a secret of the config (`api_key: ${RUNA_API_KEY}`: the key
can spend money, and the command and whatever it starts have no use for it), plus
ORDERWATCH_EVENT (order.completed ...), ORDERWATCH_EVENT_ID, ORDERWATCH_ORDER_ID and
ORDERWATCH_STATUS (COMPLETED / FAILED / EXPIRED / NOT_FOUND). Exit 0 is delivered; any other
exit, a failure to start, or a timeout (the whole process group is killed) is retried.
Its output goes to /dev/null: it may echo payout links, and it is never held in memory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import tempfile
from collections.abc import Sequence
from typing import Any

from orderwatch.core.redact import REDACTOR
from orderwatch.delivery.sinks.base import DEFAULT_SCHEDULE_S, AttemptResult, command_sink_id
from orderwatch.store.base import EventRecord

KILL_WAIT_S = 5.0


class CommandSink:
    def __init__(
        self,
        argv: Sequence[str],
        timeout_s: float,
        retry_schedule_s: tuple[float, ...] = DEFAULT_SCHEDULE_S,
        *,
        max_concurrency: int = 4,
    ) -> None:
        if not argv:
            raise ValueError("a command needs at least a program")
        self.argv = tuple(argv)
        self.id = command_sink_id(self.argv)
        self.timeout_s: float | None = timeout_s
        self.retry_schedule_s = retry_schedule_s
        self.max_concurrency = max_concurrency

    def environment(self, event: EventRecord) -> dict[str, str]:
        return {
            **{k: v for k, v in os.environ.items() if not REDACTOR.holds_secret(v)},
            "ORDERWATCH_EVENT": event.event_type,
            "ORDERWATCH_EVENT_ID": event.event_id,
            "ORDERWATCH_ORDER_ID": event.order_id,
            "ORDERWATCH_STATUS": _status(event.body),
        }

    async def attempt(self, event: EventRecord) -> AttemptResult:
        # No pipes: stdin is an unlinked file and the output goes to /dev/null. A pipe is held
        # open by every child the command leaves behind (`cmd &`, a daemon in its own
        # session), and asyncio's wait() waits for the pipes too, past the exit and even past
        # a kill; and output read back would sit in our memory.
        with tempfile.TemporaryFile() as stdin:  # 0600, and no name (O_TMPFILE on Linux)
            stdin.write(event.body)
            stdin.seek(0)
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self.argv,
                    stdin=stdin,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                    env=self.environment(event),
                    start_new_session=True,  # its own process group: a timeout kills all of it
                )
            except OSError as e:
                return AttemptResult(False, f"cannot start: {e.strerror or type(e).__name__}")
        try:
            code = await asyncio.wait_for(proc.wait(), self.timeout_s)
        except TimeoutError:
            await _kill_group(proc)
            return AttemptResult(False, "timeout")
        except asyncio.CancelledError:  # shutdown: leave no child running behind us
            await asyncio.shield(_kill_group(proc))
            raise
        outcome = f"exit {code}" if code >= 0 else f"signal {-code}"
        return AttemptResult(code == 0, outcome)

    async def close(self) -> None:
        return None


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):  # SIGKILL ends it at once; never wait unbounded
        await asyncio.wait_for(proc.wait(), KILL_WAIT_S)


def _status(body: bytes) -> str:
    """data.status of the event body, or "" when the body has none."""
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        return ""
    data = parsed.get("data") if isinstance(parsed, dict) else None
    status = data.get("status") if isinstance(data, dict) else None
    return status if isinstance(status, str) else ""
