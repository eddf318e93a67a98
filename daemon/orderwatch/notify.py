"""systemd's notify protocol, stdlib only: one datagram to $NOTIFY_SOCKET per message."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("orderwatch.notify")


class Notifier:
    """READY, STATUS, RELOADING, STOPPING and WATCHDOG to systemd; a no-op without a socket."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_interval_s = watchdog_usec / 2e6 if watchdog_usec else None
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Notifier:
        address = environ.get("NOTIFY_SOCKET") or None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        return cls(address, int(usec) if usec.isdigit() and mine else None)

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(target)
                s.sendall("\n".join(fields).encode())
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.debug("notify.failed", error=str(e))

    def ready(self) -> None:
        self.send("READY=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        if self.watchdog_interval_s:
            self.send("WATCHDOG=1")
