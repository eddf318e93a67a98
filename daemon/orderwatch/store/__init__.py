"""Durable state: the one place that owns it. `open_store` picks the backend from the settings."""

from orderwatch.store.base import (
    Claim,
    DeliveryClaim,
    DeliveryRow,
    EventRecord,
    OrderRow,
    Store,
)

__all__ = ["Claim", "DeliveryClaim", "DeliveryRow", "EventRecord", "OrderRow", "Store"]
