"""A daemon in the bench process (so its CPU time can be read) against a simulator process."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bench.common import API_KEY
from orderwatch.config.load import load_settings_from_mapping
from orderwatch.ops.daemon import Daemon
from orderwatch.ops.logs import configure_logging


def settings(tmp: Path, base_url: str, **sections: Any) -> Any:
    cfg: dict[str, Any] = {
        "runa": {"base_url": base_url, "api_key": API_KEY, "timeout": "10s"},
        "state_dir": str(tmp / "state"),
        "output_dir": str(tmp / "orders"),
        "admin": {"listen": None},
        "logging": {"format": "json", "level": "warning"},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return load_settings_from_mapping(cfg, source="<bench>")


@asynccontextmanager
async def daemon(s: Any) -> AsyncIterator[Daemon]:
    configure_logging("json", "warning", stream=io.StringIO())
    d = Daemon(s)
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    await d.ready.wait()
    try:
        yield d
    finally:
        stop.set()
        await task
