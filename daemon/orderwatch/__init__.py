"""orderwatch: follow Runa orders until they are final, durably and under a strict rate limit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from orderwatch.embed import Watcher

__all__ = ["Watcher", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Watcher":  # lazy: `orderwatch --version` should not import aiohttp
        from orderwatch.embed import Watcher

        return Watcher
    raise AttributeError(name)
