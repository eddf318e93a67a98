"""The push listener wired to the daemon's parts: the store commits, the poller is told."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any, Protocol

from orderwatch.config.models import Settings
from orderwatch.intake.push import PushListener
from orderwatch.intake.push_intake import PushIntake
from orderwatch.ops.metrics import Metrics
from orderwatch.polling.scheduler import Poller
from orderwatch.store.base import Store


class PushHost(Protocol):
    """What the listener needs of the daemon (its settings are read again after a reload)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def store(self) -> Store | None: ...
    @property
    def poller(self) -> Poller | None: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def wall(self) -> Callable[[], float]: ...


async def serve_push(host: PushHost, stack: AsyncExitStack) -> PushListener | None:
    """Start the listener when `push.listen` is set; it closes with `stack`."""
    settings = host.settings
    if not settings.push.listen:
        return None
    assert host.store is not None and host.poller is not None
    intake = PushIntake(
        host.store,
        host.poller.expedited.bring_forward,
        wall=host.wall,
        lease_s=settings.polling.lease_s,
    )
    listener = PushListener(lambda: host.settings.push, intake, host.metrics.push)
    await listener.serve()
    stack.push_async_callback(listener.close)
    return listener


async def push_report(store: Store, order_id: str) -> dict[str, Any] | None:
    """What `GET /orders/{id}` and `status` say of an order's pushes (None: none kept)."""
    seen = (await store.pushes_for([order_id])).get(order_id)
    if seen is None:
        return None
    return {"count": seen.count, "first_at": seen.first_at, "last_at": seen.last_at}
