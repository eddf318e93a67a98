"""orderwatch: follow Runa orders until they are final, durably and under a strict rate limit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orderwatch.core.version import __version__

if TYPE_CHECKING:
    from orderwatch.ops.embed import Watcher

__all__ = ["Watcher", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Watcher":  # lazy: `orderwatch --version` should not import aiohttp
        from orderwatch.ops.embed import Watcher

        return Watcher
    raise AttributeError(name)
