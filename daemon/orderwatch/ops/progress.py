"""What `wait` (and the demo) show while they follow orders.

On a terminal (stderr is one): who polls the orders (a running daemon they were handed to, or
this process), a bar whose elapsed time ticks while nothing ends, and one line each time an
order's state changes: its ID, the state and its answers so far. Off a terminal only what
scripts read: one `ID STATUS` line on stdout per ended order."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

from orderwatch.store.base import OrderRow


def answers_text(polls: int, error_streak: int) -> str:
    """What the store knows of an order's answers: `polls` counts PROCESSING answers, and
    `error_streak` the failed ones (404, 5xx, timeouts) since the last PROCESSING one."""
    text = f"{polls} processing"
    return f"{text}, {error_streak} failed in a row" if error_streak else text


def shown_state(row: OrderRow) -> str | None:
    """The state a person follows: processing, the last error, or the final status; None
    before the first answer."""
    if row.state != "pending":
        return row.final_status or row.state
    if row.error_streak:
        return row.last_error or "failed"
    return "processing" if row.polls else None


class WaitProgress:
    """Shows each change once, however often the orders change hands."""

    def __init__(self, total: int, err: TextIO | None = None, out: TextIO | None = None) -> None:
        self._err = err if err is not None else sys.stderr
        self._out = out if out is not None else sys.stdout
        self.live = self._err.isatty()
        self.bar = tqdm(total=total, unit="order", file=self._err, disable=not self.live)
        self._shown: dict[str, str | None] = {}
        self._said: str | None = None

    def say(self, line: str) -> None:
        """Who polls the orders now; on a terminal, and only when it changed."""
        if self.live and line != self._said:
            self.bar.write(line, file=self._err)
        self._said = line

    def show(self, rows: list[OrderRow]) -> list[OrderRow]:
        """Show what changed since the last call; return the orders that have ended."""
        for r in rows:
            state = shown_state(r)
            if state == self._shown.get(r.order_id):
                continue
            self._shown[r.order_id] = state
            if r.state != "pending":
                self.bar.update(1)
                self._ended(r)
            elif self.live:
                answers = answers_text(r.polls, r.error_streak)
                self.bar.write(f"{r.order_id} {state} (answers: {answers})", file=self._err)
        self.bar.refresh()  # the elapsed time moves even when nothing else does
        return [r for r in rows if r.state != "pending"]

    def _ended(self, row: OrderRow) -> None:
        line = f"{row.order_id} {row.final_status}"
        if not self.live:
            print(line, file=self._out, flush=True)
            return
        if self._out.isatty():  # a person reads it; a pipe gets the line scripts expect
            line += f" (answers: {answers_text(row.polls, row.error_streak)})"
        self.bar.write(line, file=self._out)

    def close(self) -> None:
        self.bar.close()
