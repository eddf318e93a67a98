"""The per-poll series are plain numbers rendered at scrape time (metrics.PollCounters); they
must read exactly as prometheus_client's own Counter, Histogram and Gauge would, and a running
daemon's /metrics must pass promtool."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from orderwatch.devtools.receiver import Receiver, running_receiver
from orderwatch.devtools.simulator import SimOptions, running_simulator
from orderwatch.ops.metrics import Metrics
from orderwatch.polling.answers import Kind
from orderwatch.polling.metrics import LIST_KINDS, ORDER_KINDS, REQUEST_BUCKETS, PollCounters

from harness import (
    API_KEY,
    SECRET,
    free_port,
    http,
    running_daemon,
    settings_for,
    until,
)

# Bucket bounds exactly, between them, below the first and beyond the last.
ANSWERS = [
    (Kind.PROCESSING, 0.0),
    (Kind.PROCESSING, 0.01),
    (Kind.FINAL, 0.0100001),
    (Kind.TRANSPORT, 10.0),
    (Kind.RATE_LIMITED, 30.0),
    (Kind.SERVER_ERROR, 31.5),
    (Kind.PROCESSING, 0.3),
]
LIST_ANSWERS = [(Kind.LISTED, 0.2), (Kind.INVALID, 0.05), (Kind.RATE_LIMITED, 0.01)]


def test_poll_counters_render_as_the_library_would() -> None:
    ours = CollectorRegistry(auto_describe=True)
    counters = PollCounters()
    ours.register(counters)
    theirs = CollectorRegistry(auto_describe=True)
    requests = Counter(
        "orderwatch_api_requests",
        "GET requests sent to the Runa API, by endpoint (order: one order, list: a page"
        " of the order list) and classified outcome.",
        ["endpoint", "outcome"],
        registry=theirs,
    )
    seconds = Histogram(
        "orderwatch_api_request_duration_seconds",
        "Time from sending a GET to its classified answer.",
        registry=theirs,
        buckets=REQUEST_BUCKETS,
    )
    last = Gauge(
        "orderwatch_last_successful_poll_timestamp_seconds",
        "Unix time of the last valid answer from the Runa API.",
        registry=theirs,
    )
    for k in ORDER_KINDS:
        requests.labels("order", k.value)
    for k in LIST_KINDS:
        requests.labels("list", k.value)
    for kind, s in ANSWERS:
        counters.answered(kind, s)
        requests.labels("order", kind.value).inc()
        seconds.observe(s)
    for kind, s in LIST_ANSWERS:
        counters.listed(kind, s)
        requests.labels("list", kind.value).inc()
        seconds.observe(s)
    counters.last_success = 1764900000.25
    last.set(1764900000.25)
    assert generate_latest(ours) == generate_latest(theirs)


def test_the_daemon_registry_holds_the_poll_series_once() -> None:
    text = Metrics().render().decode()
    assert text.count("# TYPE orderwatch_api_requests_total counter") == 1
    assert text.count("# TYPE orderwatch_api_request_duration_seconds histogram") == 1
    assert text.count("# TYPE orderwatch_last_successful_poll_timestamp_seconds gauge") == 1


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("PROMTOOL_REQUIRED"),
    reason="promtool not installed (Debian: the prometheus package; .ci/run fetches it)",
)
async def test_metrics_pass_promtool(tmp_path: Path) -> None:
    """`promtool check metrics` finds nothing to say about /metrics of a daemon that has
    polled, finished an order and delivered to a webhook (every family has samples)."""
    assert PROMTOOL is not None, "PROMTOOL_REQUIRED is set but promtool is not on PATH"
    port = free_port()
    receiver = Receiver(SECRET)
    opts = SimOptions(api_key=API_KEY, complete_after=0.2)
    async with running_simulator(opts) as rs, running_receiver(receiver) as url:
        settings = settings_for(
            tmp_path,
            rs.base_url,
            admin={"listen": f"127.0.0.1:{port}"},
            webhooks=[{"url": url, "secret": SECRET}],
        )
        async with running_daemon(settings) as d:
            await d.add_orders(["O-PROM1"])

            async def delivered() -> bool:
                return len(receiver.events) == 1

            await until(delivered, receiver.changed)
            _, metrics = await http("GET", f"http://127.0.0.1:{port}/metrics")
    assert "orderwatch_delivery_latency_seconds_count 1" in metrics
    r = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=metrics, capture_output=True, text=True, timeout=60
    )
    assert (r.returncode, r.stdout + r.stderr) == (0, "")
