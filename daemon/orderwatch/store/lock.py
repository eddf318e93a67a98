"""Embedded state on disk: its directory (0700, it holds payout links) and the one-daemon
lock (an exclusive flock; released by the kernel if the daemon dies, even by SIGKILL)."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from orderwatch.core.errors import StateLockedError, StoreError
from orderwatch.core.files import private_dir

LOCK_NAME = "daemon.lock"
CONTENDED_S = 1.0  # how long acquire() retries: a probe holds the lock for microseconds


def prepare_state_dir(state_dir: Path) -> None:
    """Create state_dir 0700 (it holds payout links) or tighten an existing one we own."""
    try:
        private_dir(state_dir)
    except OSError as e:
        raise StoreError(f"state_dir {state_dir}: {e.strerror or e}") from e


class DaemonLock:
    """An exclusive flock on state_dir/daemon.lock: one daemon per embedded state."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, role: str = "run") -> None:
        """Take the lock and record who holds it (`run`, or `wait` polling by itself)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise self._unusable(e) from None
        deadline = time.monotonic() + CONTENDED_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:  # perhaps only is_held_elsewhere's probe
                    time.sleep(0.02)
                    continue
                os.close(fd)
                raise StateLockedError(
                    f"{self.path.parent}: another orderwatch daemon is already running on"
                    " this state"
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {role}\n".encode())
        self._fd = fd

    def last_role(self) -> str | None:
        """The role the current or last holder recorded (`run`, `wait`), if any."""
        try:
            words = self.path.read_text().split()
        except (OSError, UnicodeDecodeError):
            return None
        return words[1] if len(words) > 1 else None

    def is_held_elsewhere(self) -> bool:
        """True when some other process holds the lock (a daemon runs on this state)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)  # flock needs no write access
        except FileNotFoundError:
            return False
        except OSError as e:
            raise self._unusable(e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def _unusable(self, e: OSError) -> StoreError:
        """One line for a lock file we cannot open (the usual one: root's, left by one
        `sudo orderwatch run`)."""
        return StoreError(f"state_dir lock {self.path}: {e.strerror or e}")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
