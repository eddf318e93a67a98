"""Run orderwatch inside your own asyncio application, with async callbacks as sinks.

    from orderwatch import Watcher

    async def on_final(event: dict) -> None:
        # event = {"id": <webhook-id>, "type": "order.completed", "timestamp": ..., "data": {...}}
        ...

    async with Watcher({"runa": {"api_key": key}, "state_dir": "/var/lib/app/ow",
                        "output_dir": "/var/lib/app/ow/orders"}, callbacks=[on_final]) as w:
        await w.add(["O-01H5WQGHKCBB85MQFM68S9KJ5Q"])
        ...  # your application runs; callbacks arrive at least once, durably

A callback that raises is retried on the command/callback schedule like any sink; give it an
idempotent body (the event id is stable). Callbacks are identified by module and qualified
name, so a pending delivery survives a restart of your application.

orderwatch logs through your structlog configuration. Its lines hold no payload, and a
callback's error is redacted before it is logged; to keep the redactor as a backstop for
everything, put `orderwatch.core.redact.REDACTOR` in your processor chain before the renderer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from orderwatch.config.callbacks import Callback
from orderwatch.config.models import Settings
from orderwatch.core.errors import UsageError
from orderwatch.core.ids import is_valid_order_id
from orderwatch.ops.daemon import Daemon
from orderwatch.store.base import OrderRow, Store


class Watcher:
    def __init__(
        self, settings: Settings | Mapping[str, Any], *, callbacks: Sequence[Callback] = ()
    ) -> None:
        if not isinstance(settings, Settings):
            from orderwatch.config.load import load_settings_from_mapping

            settings = load_settings_from_mapping(dict(settings), source="<Watcher>")
        self.daemon = Daemon(settings, callbacks=callbacks)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watcher:
        self._task = asyncio.create_task(self.daemon.run(self._stop), name="orderwatch")
        ready = asyncio.create_task(self.daemon.ready.wait())
        try:
            await asyncio.wait([self._task, ready], return_when="FIRST_COMPLETED")
        except BaseException:  # cancelled while starting: `async with` will not stop it
            ready.cancel()
            self._stop.set()
            await asyncio.shield(asyncio.wait([self._task]))
            raise
        if self._task.done():
            ready.cancel()
            self._task.result()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def add(self, order_ids: Iterable[str]) -> int:
        """Track these orders (durably); returns how many were new."""
        self._running()
        ids = list(order_ids)
        bad = [i for i in ids if not is_valid_order_id(i)]
        if bad:
            raise UsageError(f"invalid order id: {bad[0][:40]!r}")
        return await self.daemon.add_orders(ids)

    async def status(self, order_ids: Sequence[str]) -> list[OrderRow]:
        return await self._running().get_orders(order_ids)

    def _running(self) -> Store:
        """The open store, or a UsageError outside `async with Watcher(...)`."""
        store = self.daemon.store
        if self._task is None or self._task.done() or self._stop.is_set() or store is None:
            raise UsageError("the Watcher is not running: use it inside `async with`")
        return store
