"""Prometheus metrics: one registry per daemon, `orderwatch_` prefix, no order-id labels.
The poller and the deliverer own their series (`polling.metrics`, `delivery.metrics`); the
gauges that mirror the store are set here by the daemon's refresher."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.registry import Collector

from orderwatch.delivery.metrics import DeliveryMetrics
from orderwatch.intake.push import PushMetrics
from orderwatch.polling.metrics import PollMetrics


class Metrics:
    """Every family the daemon exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.poll = PollMetrics(r)
        self.delivery = DeliveryMetrics(r)
        self.push = PushMetrics(r)
        self.orders = Gauge(
            "orderwatch_orders", "Orders in the store, by state.", ["state"], registry=r
        )
        self.oldest_pending_age = Gauge(
            "orderwatch_oldest_pending_age_seconds",
            "Age of the oldest order still PROCESSING (alert on this).",
            registry=r,
        )
        self.dead_deliveries = Gauge(
            "orderwatch_deliveries_dead",
            "Deliveries that spent their retry schedule.",
            registry=r,
        )
        self.ready = Gauge("orderwatch_ready", "1 when the daemon is ready.", registry=r)
        self.rate_limit = Gauge(
            "orderwatch_rate_limit_requests_per_second",
            "The rate limit in force (rate_limit.requests_per_second; shared by every replica"
            " of one PostgreSQL store), to draw the request rate against.",
            registry=r,
        )

    def register(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)
