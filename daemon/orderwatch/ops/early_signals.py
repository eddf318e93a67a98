"""Stop and reload signals that arrive before the event loop takes them over.

`orderwatch run` spends its first half second starting the interpreter, importing and reading
the config; the loop's handlers come after that. Until then a SIGHUP (`systemctl reload` right
after a start, `docker kill -s HUP`) would kill the process and a SIGTERM would not stop it
cleanly. `hold_early` records them from the first line of the command instead, and the daemon
acts on them once its handlers are in place (`take_early`)."""

from __future__ import annotations

import signal
from types import FrameType

HELD = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_early: list[int] = []


def _record(signum: int, _frame: FrameType | None) -> None:
    _early.append(signum)


def hold_early() -> None:
    for sig in HELD:
        signal.signal(sig, _record)


def take_early() -> list[int]:
    """The signals recorded so far, in order (and forget them)."""
    taken = list(_early)
    _early.clear()
    return taken
