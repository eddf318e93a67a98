"""The series the outbox moves: attempts by result and the latency of deliveries."""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call] # no *_created series: promtool and people agree


class DeliveryMetrics:
    """What the deliverer counts. A fresh registry of its own unless one is given."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.deliveries = Counter(
            "orderwatch_delivery_attempts",
            "Delivery attempts to sinks, by result (delivered, retry, dead).",
            ["result"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "orderwatch_delivery_latency_seconds",
            "Time from an order's final event to its successful delivery.",
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300, 1800, 7200, 36000),
        )
        # Every known label value from the start: an alert on result="dead" sees 0, not nothing.
        for result in ("delivered", "retry", "dead"):
            self.deliveries.labels(result)
