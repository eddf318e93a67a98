"""Whether each watchlist file can be read: `check-config` asks, `run` does not. A daemon
watches its lists and reads one that appears later; a check says what it would read now."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from orderwatch.config.source import Collector, reason
from orderwatch.core.files import open_regular


def check_watchlists(paths: Sequence[Path], c: Collector) -> None:
    """One located problem per watchlist that is missing or cannot be read by this user (a
    directory, a FIFO, no permission): `run`, as this user, would read nothing from it."""
    for i, path in enumerate(paths):
        try:
            open_regular(path).close()
        except FileNotFoundError:
            c.add(("watchlists", i), f"no such file: {path}")
        except OSError as e:
            c.add(("watchlists", i), f"cannot read {path}: {reason(e)}")
