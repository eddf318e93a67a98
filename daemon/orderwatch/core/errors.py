"""One small error hierarchy. The CLI turns these into one line and an exit code."""

from __future__ import annotations

from dataclasses import dataclass


class OrderwatchError(Exception):
    """Root of every error orderwatch raises on purpose. Exit code 1 unless said otherwise."""

    exit_code = 1


class UsageError(OrderwatchError):
    """The user asked for something that cannot be done as asked (exit 2)."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Problem:
    """One located problem in a config or watchlist: `file:line: key: message`."""

    file: str
    line: int | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(UsageError):
    """The config is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    @classmethod
    def single(cls, key: str, message: str, file: str = "config") -> ConfigError:
        return cls([Problem(file, None, key, message)])


class StateLockedError(UsageError):
    """Another daemon already owns this embedded state directory."""


class StoreError(OrderwatchError):
    """The durable store failed (disk full, database unreachable, corrupt file)."""


MAX_STORE_BACKOFF_S = 4.0  # a failing store is asked again at most this far apart


def store_backoff(previous_s: float) -> float:
    """The wait after a failed store call: 1 s, doubling while calls keep failing, capped.
    (A full disk or a read-only database still answers reads, so whatever said "work is
    due" says it again at once: without a wait the caller would spin on the error.)"""
    return min(max(2 * previous_s, 1.0), MAX_STORE_BACKOFF_S)
