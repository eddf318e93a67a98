"""Prometheus metrics: one registry per daemon, `orderwatch_` prefix, no order-id labels."""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.registry import Collector

from orderwatch.answers import Kind

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call] # no *_created series: promtool and people agree


class Metrics:
    """Every family the daemon exports. Gauges that mirror the store are set by a refresher."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "orderwatch_api_requests",
            "GET requests sent to the Runa API, by classified outcome.",
            ["outcome"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "orderwatch_api_request_duration_seconds",
            "Time from sending a GET to its classified answer.",
            registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.rate_limited = Counter(
            "orderwatch_api_rate_limited", "429 answers from the Runa API.", registry=r
        )
        self.limiter_wait = Counter(
            "orderwatch_limiter_wait_seconds",
            "Total time requests waited for the rate limiter.",
            registry=r,
        )
        self.orders = Gauge(
            "orderwatch_orders", "Orders in the store, by state.", ["state"], registry=r
        )
        self.oldest_pending_age = Gauge(
            "orderwatch_oldest_pending_age_seconds",
            "Age of the oldest order still PROCESSING (alert on this).",
            registry=r,
        )
        self.finals = Counter(
            "orderwatch_orders_finished",
            "Orders that ended, by final status.",
            ["status"],
            registry=r,
        )
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
        self.dead_deliveries = Gauge(
            "orderwatch_deliveries_dead",
            "Deliveries that spent their retry schedule.",
            registry=r,
        )
        self.last_success = Gauge(
            "orderwatch_last_successful_poll_timestamp_seconds",
            "Unix time of the last valid answer from the Runa API.",
            registry=r,
        )
        self.ready = Gauge("orderwatch_ready", "1 when the daemon is ready.", registry=r)
        # One child per outcome, resolved once: `labels()` takes a lock and builds a key on
        # every call, and this counter moves on every poll.
        self.requests_by_kind = {k: self.requests.labels(k.value) for k in Kind}
        # Every known label value from the start: an alert on result="dead" sees 0, not nothing.
        for status in ("COMPLETED", "FAILED", "EXPIRED", "NOT_FOUND"):
            self.finals.labels(status)
        for result in ("delivered", "retry", "dead"):
            self.deliveries.labels(result)

    def register(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)
