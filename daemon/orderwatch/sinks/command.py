"""Command sink: argv from config (never a shell), the event JSON on stdin, facts in the
environment. Exit 0 is delivered; anything else, or a timeout, is retried. Its output is not
logged (it may echo payout links): only its size."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Sequence

import structlog

from orderwatch.sinks.base import AttemptResult, short_hash
from orderwatch.store.base import EventRecord

log = structlog.get_logger("orderwatch.sinks.command")


class CommandSink:
    def __init__(
        self, argv: Sequence[str], timeout_s: float, retry_schedule_s: tuple[float, ...]
    ) -> None:
        self.argv = tuple(argv)
        self.id = f"command:{os.path.basename(self.argv[0])}:{short_hash(json.dumps(self.argv))}"
        self.timeout_s = timeout_s
        self.retry_schedule_s = retry_schedule_s
        self.max_concurrency = 4

    def environment(self, event: EventRecord) -> dict[str, str]:
        status = json.loads(event.body).get("data", {}).get("status", "")
        return {
            **os.environ,
            "ORDERWATCH_EVENT": event.event_type,
            "ORDERWATCH_EVENT_ID": event.event_id,
            "ORDERWATCH_ORDER_ID": event.order_id,
            "ORDERWATCH_STATUS": str(status),
        }

    async def attempt(self, event: EventRecord) -> AttemptResult:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.environment(event),
                start_new_session=True,
            )
        except OSError as e:
            return AttemptResult(False, f"cannot start: {e.strerror}")
        try:
            out, err = await asyncio.wait_for(proc.communicate(event.body), self.timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return AttemptResult(False, "timeout")
        log.debug(
            "command.output", order_id=event.order_id, stdout_bytes=len(out), stderr_bytes=len(err)
        )
        code = proc.returncode
        return AttemptResult(code == 0, f"exit {code}")

    async def close(self) -> None:
        return None
