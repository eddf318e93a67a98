"""The series the polling loop moves: answers by kind, request time, 429s, limiter waits and
orders finished. Registered into the daemon's registry by `ops.metrics.Metrics`."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from orderwatch.polling.answers import Kind

_ORDER_ONLY = (Kind.PROCESSING, Kind.FINAL, Kind.NOT_FOUND)

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call] # no *_created series: promtool and people agree

REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# What each endpoint's answers can be: `order` is GET /order/{id}, `list` is GET /order.
ORDER_KINDS: tuple[Kind, ...] = tuple(k for k in Kind if k is not Kind.LISTED)
LIST_KINDS: tuple[Kind, ...] = (Kind.LISTED, *(k for k in ORDER_KINDS if k not in _ORDER_ONLY))


class PollCounters(Collector):
    """The series every poll moves, kept as plain numbers and turned into families when
    scraped: prometheus_client's objects take a lock for each update, several times the cost.
    Updated and rendered on the event loop thread only (the admin server runs there), so no
    lock is needed."""

    def __init__(self) -> None:
        self.by_kind: dict[Kind, int] = dict.fromkeys(ORDER_KINDS, 0)
        self.by_list_kind: dict[Kind, int] = dict.fromkeys(LIST_KINDS, 0)
        self.buckets = [0] * (len(REQUEST_BUCKETS) + 1)  # the last one is +Inf
        self.seconds_sum = 0.0
        self.last_success = 0.0

    def answered(self, kind: Kind, seconds: float) -> None:
        """One GET answered after `seconds`, classified as `kind`."""
        self.by_kind[kind] += 1
        self.buckets[bisect_left(REQUEST_BUCKETS, seconds)] += 1
        self.seconds_sum += seconds

    def listed(self, kind: Kind, seconds: float) -> None:
        """One page of the list endpoint answered after `seconds`, classified as `kind`."""
        self.by_list_kind[kind] += 1
        self.buckets[bisect_left(REQUEST_BUCKETS, seconds)] += 1
        self.seconds_sum += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "orderwatch_api_requests",
            "GET requests sent to the Runa API, by endpoint (order: one order, list: a page"
            " of the order list) and classified outcome.",
            labels=["endpoint", "outcome"],
        )
        for kind, n in self.by_kind.items():
            requests.add_metric(["order", kind.value], n)
        for kind, n in self.by_list_kind.items():
            requests.add_metric(["list", kind.value], n)
        yield requests
        cumulative, total = [], 0
        for bound, n in zip((*REQUEST_BUCKETS, float("inf")), self.buckets, strict=True):
            total += n
            cumulative.append((floatToGoString(bound), total))  # type: ignore[no-untyped-call]
        yield HistogramMetricFamily(
            "orderwatch_api_request_duration_seconds",
            "Time from sending a GET to its classified answer.",
            buckets=cumulative,
            sum_value=self.seconds_sum,
        )
        yield GaugeMetricFamily(
            "orderwatch_last_successful_poll_timestamp_seconds",
            "Unix time of the last valid answer from the Runa API.",
            value=self.last_success,
        )


class PollMetrics:
    """What the poller counts. A fresh registry of its own unless one is given."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.polls = PollCounters()
        r.register(self.polls)
        self.rate_limited = Counter(
            "orderwatch_api_rate_limited", "429 answers from the Runa API.", registry=r
        )
        self.limiter_wait = Counter(
            "orderwatch_limiter_wait_seconds",
            "Total time requests waited for the rate limiter.",
            registry=r,
        )
        self.finals = Counter(
            "orderwatch_orders_finished",
            "Orders that ended, by final status.",
            ["status"],
            registry=r,
        )
        # Every known label value from the start: an alert on a status sees 0, not nothing.
        for status in ("COMPLETED", "FAILED", "EXPIRED", "NOT_FOUND"):
            self.finals.labels(status)
        self.sweeps = Counter(
            "orderwatch_sweeps",
            "Sweeps of the order list, by how they ended: covered (every pending order seen,"
            " or only older orders left), end (of the list), budget (pages spent), failed"
            " (a page could not be read), refused (401/403 on the list), paused (429).",
            ["outcome"],
            registry=r,
        )
        for outcome in ("covered", "end", "budget", "failed", "refused", "paused"):
            self.sweeps.labels(outcome)
