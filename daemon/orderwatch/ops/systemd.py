"""systemd's notify protocol, stdlib only: one datagram to $NOTIFY_SOCKET per message.

`NOTIFY_SOCKET` is a filesystem path, or `@name` for Linux's abstract namespace (sent with a
leading NUL byte). Without it every call is a no-op, so the daemon runs the same way in a
terminal, a container or a test. A failed send is never an error for the daemon: it is
logged once, at debug level, and the daemon carries on."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("orderwatch.notify")


def _address(value: str) -> bytes:
    raw = os.fsencode(value)
    return b"\0" + raw[1:] if raw.startswith(b"@") else raw


def _watchdog_usec(environ: Mapping[str, str]) -> int | None:
    """$WATCHDOG_USEC when it is meant for this process ($WATCHDOG_PID unset or ours)."""
    usec, pid = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) if usec.isdigit() and int(usec) > 0 else None


class Notifier:
    """READY, STATUS, RELOADING, STOPPING and WATCHDOG to systemd; a no-op without a socket."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address or None
        # systemd's advice: ping at half the timeout it set.
        self.watchdog_interval_s: float | None = watchdog_usec / 2e6 if watchdog_usec else None
        self._failed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """From $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID (os.environ by default)."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"), _watchdog_usec(env))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send `fields` as one message (newline-separated). True if it was sent."""
        if self.address is None or not fields:
            return False
        message = "\n".join(fields).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(message, _address(self.address))
        except (OSError, ValueError) as e:
            if not self._failed:
                self._failed = True
                log.debug("notify.failed", socket=self.address, error=str(e))
            return False
        return True

    def ready(self) -> None:
        self.send("READY=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={' '.join(text.splitlines())}")

    def reloading(self) -> None:
        """RELOADING=1 with the monotonic timestamp systemd wants in the same message."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        """A keep-alive; sent only when systemd asked for one (WatchdogSec=)."""
        if self.watchdog_interval_s is not None:
            self.send("WATCHDOG=1")
