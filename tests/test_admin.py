"""The admin server: its API and /metrics for an operator, hostile bodies and a failing
store answered in JSON, and clients that are not Prometheus or an operator: idle and slow
connections, web pages in a browser on the same host, odd Authorization headers, and what the
gauges and STATUS= say while the state store is down."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import orderwatch.ops.admin as admin
from orderwatch.core.errors import StoreError
from orderwatch.devtools.simulator import SimOptions, running_simulator

from harness import (
    API_KEY,
    RecordingNotifier,
    changes_of,
    free_port,
    http,
    running_daemon,
    settings_for,
    until,
)


async def _raw(port: int, request: bytes) -> bytes:
    """Send `request` as is on a new connection; the answer's first line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), within) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


@pytest.mark.slow
async def test_idle_connections_are_bounded_and_dropped(tmp_path: Path) -> None:
    """Connections that send nothing were kept for aiohttp's default hour, without a bound:
    about 1,000 of them used up the daemon's file descriptors, and final payloads could not
    be written. Past MAX_CONNECTIONS a new one is closed at once; an idle one goes after
    KEEPALIVE_S; then the server answers again. (A running daemon's admin server, started
    here with bounds of 8 and 3 s.)"""
    port = free_port()
    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        settings = settings_for(tmp_path, rs.base_url)
        listen = settings_for(tmp_path, rs.base_url, admin={"listen": f"127.0.0.1:{port}"}).admin
        async with running_daemon(settings) as d:
            server = await admin.start_admin(d, listen, max_connections=8, keepalive_s=3.0)
            assert server is not None
            links = [await asyncio.open_connection("127.0.0.1", port) for _ in range(12)]
            early = await asyncio.gather(*(_closed_by_server(r, 1.5) for r, _ in links))
            assert early.count(True) == 4, early  # the 4 beyond the bound, at once
            later = await asyncio.gather(*(_closed_by_server(r, 5.0) for r, _ in links))
            assert all(later), later  # the idle ones after the keep-alive timeout
            for _, w in links:
                w.close()
            assert (await http("GET", f"http://127.0.0.1:{port}/healthz"))[0] == 200
            await server.cleanup()


@pytest.mark.slow
async def test_slow_admin_clients_do_not_hold_the_stop(tmp_path: Path) -> None:
    """A scrape waiting on a slow store, or a client pipelining requests without reading the
    answers, held the admin server's cleanup for aiohttp's default 60 s (twice over): the
    stop took a minute or more, and systemd's TimeoutStopSec would have ended it with SIGKILL.
    Admin requests in progress now get SHUTDOWN_S."""
    port = free_port()
    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        settings = settings_for(
            tmp_path, rs.base_url, admin={"listen": f"127.0.0.1:{port}"}, shutdown_timeout="1s"
        )
        async with running_daemon(settings) as d:
            assert d.store is not None

            async def hangs() -> dict[str, int]:
                await asyncio.sleep(30)  # PostgreSQL behind a dead link: up to its 30 s bound
                return {}

            d.store.delivery_counts = hangs  # type: ignore[method-assign]
            scrape = f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
            _, waiting = await asyncio.open_connection("127.0.0.1", port)
            waiting.write(scrape)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(scrape.replace(b"metrics", b"healthz") * 3000)  # and never read
            await asyncio.sleep(2.0)
            stopping = time.monotonic()
        took = time.monotonic() - stopping
        waiting.close()
        sock.close()
    assert took < 1.0 + 2 * admin.SHUTDOWN_S + 3.0, f"the stop took {took:.1f}s"


async def test_web_pages_cannot_reach_a_listener_without_a_token(tmp_path: Path) -> None:
    """Without a token (loopback only), a page in a browser on this host could add orders
    with a plain-text POST (no CORS preflight), and read the API through DNS rebinding. A
    POST must now be JSON (which a browser sends only after a preflight that is never
    approved), and a Host that is not a loopback name is refused."""
    port = free_port()
    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        settings = settings_for(tmp_path, rs.base_url, admin={"listen": f"127.0.0.1:{port}"})
        async with running_daemon(settings) as d:
            body = json.dumps({"ids": ["O-EVIL1"]})
            plain = (
                f"POST /orders HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n{body}"
            )
            assert (await _raw(port, plain.encode())).startswith(b"HTTP/1.1 415")
            rebound = plain.replace(f"127.0.0.1:{port}", f"evil.example:{port}")
            rebound = rebound.replace("text/plain", "application/json")
            assert (await _raw(port, rebound.encode())).startswith(b"HTTP/1.1 403")
            for host in ("evil.example", "127.0.0.1.evil.example"):
                get = f"GET /metrics HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"
                assert (await _raw(port, get.encode())).startswith(b"HTTP/1.1 403"), host
            assert d.store is not None
            assert await d.store.get_orders(["O-EVIL1"]) == []
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]", "LOCALHOST."):
                get = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n"
                assert (await _raw(port, get.encode())).startswith(b"HTTP/1.1 200"), host
            assert (await _raw(port, b"GET /healthz HTTP/1.0\r\n\r\n")).endswith(b" 200 OK\r\n")
            status, _ = await http("POST", f"http://127.0.0.1:{port}/orders", json={"ids": ["O-1"]})
            assert status == 200


async def test_authorization_is_read_as_rfc_7235_has_it(tmp_path: Path) -> None:
    """A byte that is not UTF-8 in the header was a 500 with a traceback in the log, for
    anyone, on every request; the scheme is case-insensitive ("bearer" was refused)."""
    port = free_port()
    (tmp_path / "token").write_text("tok3n-for-admin\n")
    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        settings = settings_for(
            tmp_path,
            rs.base_url,
            admin={"listen": f"127.0.0.1:{port}", "token_file": str(tmp_path / "token")},
        )
        async with running_daemon(settings):
            body = b'{"ids": ["O-1"]}'

            def post(auth: bytes) -> bytes:
                return (
                    b"POST /orders HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Authorization: " + auth + b"\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )

            assert (await _raw(port, post(b"Bearer tok\xff"))).startswith(b"HTTP/1.1 401")
            assert (await _raw(port, post(b"Bearer  wrong"))).startswith(b"HTTP/1.1 401")
            for good in (b"bearer tok3n-for-admin", b"BEARER  tok3n-for-admin"):
                assert (await _raw(port, post(good))).startswith(b"HTTP/1.1 200"), good


async def test_the_ready_gauge_and_status_follow_a_store_outage(tmp_path: Path) -> None:
    """/readyz said the store was down, while orderwatch_ready stayed 1 and systemd's STATUS=
    kept the last healthy counts: an alert on the gauge never fired."""
    notifier = RecordingNotifier()
    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        settings = settings_for(tmp_path, rs.base_url)
        async with running_daemon(settings, notifier=notifier) as d:
            await d.refresh_gauges()
            assert d.metrics.registry.get_sample_value("orderwatch_ready") == 1
            store = d.store
            assert store is not None
            healthy = store.counts

            async def broken() -> dict[str, int]:
                raise StoreError("state database: disk I/O error")

            store.counts = broken  # type: ignore[method-assign]
            with pytest.raises(StoreError):
                await d.refresh_gauges()
            assert d.metrics.registry.get_sample_value("orderwatch_ready") == 0
            assert notifier.sent[-1].endswith("NOT READY: the state store is unavailable")
            store.counts = healthy  # type: ignore[method-assign]
            await d.refresh_gauges()
            assert d.metrics.registry.get_sample_value("orderwatch_ready") == 1
            assert "NOT READY" not in notifier.sent[-1]


async def test_off_loopback_every_route_but_the_probes_needs_the_token(tmp_path: Path) -> None:
    """With admin.listen on 0.0.0.0 and a token (the Kubernetes recipe), GET /orders/{id}
    answered without the token. Off loopback only the probes and the scrape are open."""
    port = free_port()
    token = "an-admin-token-of-24-chars"
    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        admin_cfg = {"listen": f"0.0.0.0:{port}", "token": token}
        settings = settings_for(tmp_path, rs.base_url, admin=admin_cfg)
        async with running_daemon(settings) as d:
            assert d.store is not None
            await d.store.add_orders(["O-TOK1"], 0.0, 0.0)
            base = f"http://127.0.0.1:{port}"
            for path in ("/healthz", "/readyz", "/metrics"):
                assert (await http("GET", base + path))[0] == 200, path
            assert (await http("GET", f"{base}/orders/O-TOK1"))[0] == 401
            auth = {"Authorization": f"Bearer {token}"}
            assert (await http("GET", f"{base}/orders/O-TOK1", headers=auth))[0] == 200
            assert (await http("GET", f"{base}/nowhere"))[0] == 401  # not even a 404 to map
            status, _ = await http("POST", f"{base}/orders", json={"ids": ["O-2"]})
            assert status == 401


async def test_one_peer_cannot_hold_every_slot(tmp_path: Path) -> None:
    """Idle sockets from one network peer held all 64 connection slots and /healthz failed
    27 of 27 tries (liveness probes failed, pods restarted). One address holds at most
    MAX_PER_PEER; a probe from another is answered."""
    port = free_port()
    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        admin_cfg = {"listen": f"0.0.0.0:{port}", "token": "an-admin-token-of-24-chars"}
        settings = settings_for(tmp_path, rs.base_url, admin=admin_cfg)
        async with running_daemon(settings):
            links = [
                await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
                for _ in range(admin.MAX_PER_PEER + 4)
            ]
            closed = await asyncio.gather(*(_closed_by_server(r, 1.5) for r, _ in links))
            assert closed.count(True) == 4, closed  # those beyond the bound, at once
            assert (await http("GET", f"http://127.0.0.1:{port}/healthz"))[0] == 200
            for _, w in links:
                w.close()


async def test_admin_api_and_metrics(tmp_path: Path) -> None:
    """/healthz, /readyz, /metrics (parsed by prometheus-client with every family), POST
    /orders behind a bearer token, GET /orders/{id} without any payload."""
    port = free_port()
    (tmp_path / "token").write_text("s3cret-admin-token\n")
    async with running_simulator(SimOptions(api_key=API_KEY, complete_after=0.2)) as rs:
        settings = settings_for(
            tmp_path,
            rs.base_url,
            admin={"listen": f"127.0.0.1:{port}", "token_file": str(tmp_path / "token")},
        )
        base = f"http://127.0.0.1:{port}"
        async with running_daemon(settings) as d:
            assert (await http("GET", f"{base}/healthz"))[0] == 200
            assert (await http("GET", f"{base}/readyz")) == (200, '{"ready": true, "reason": "ok"}')
            body = {"ids": ["O-ADM1", "../etc"]}
            assert (await http("POST", f"{base}/orders", json=body))[0] == 401
            status, text = await http(
                "POST",
                f"{base}/orders",
                json=body,
                headers={"Authorization": "Bearer s3cret-admin-token"},
            )
            assert status == 200 and json.loads(text) == {
                "accepted": 1,
                "new": 1,
                "invalid": ["../etc"],
            }
            assert (
                await http(
                    "POST",
                    f"{base}/orders",
                    data=b"nope",
                    headers={
                        "Authorization": "Bearer s3cret-admin-token",
                        "Content-Type": "application/json",
                    },
                )
            )[0] == 400

            async def final() -> bool:
                return (await d.store.counts())["final"] == 1  # type: ignore[union-attr]

            await until(final, *changes_of(d))
            status, text = await http("GET", f"{base}/orders/O-ADM1")
            order = json.loads(text)
            assert status == 200 and order["state"] == "final" and "items" not in text
            assert (await http("GET", f"{base}/orders/O-NOPE"))[0] == 404
            _, metrics = await http("GET", f"{base}/metrics")
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    for name in (
        "orderwatch_api_requests",
        "orderwatch_orders",
        "orderwatch_oldest_pending_age_seconds",
        "orderwatch_limiter_wait_seconds",
        "orderwatch_api_rate_limited",
        "orderwatch_delivery_attempts",
        "orderwatch_orders_finished",
        "orderwatch_delivery_latency_seconds",
        "orderwatch_deliveries_dead",
        "orderwatch_last_successful_poll_timestamp_seconds",
        "orderwatch_api_request_duration_seconds",
        "orderwatch_ready",
    ):
        assert name in families, name
    finals = [s for s in families["orderwatch_orders"].samples if s.labels == {"state": "final"}]
    assert finals[0].value == 1
    # every known label value is there from the start (an alert sees 0, not no data)
    dead = [
        s for s in families["orderwatch_delivery_attempts"].samples if s.labels["result"] == "dead"
    ]
    assert [s.value for s in dead] == [0]
    statuses = {s.labels["status"] for s in families["orderwatch_orders_finished"].samples}
    assert statuses == {"COMPLETED", "FAILED", "EXPIRED", "NOT_FOUND"}
    assert "O-ADM1" not in metrics  # no order-id labels


async def test_admin_api_answers_hostile_bodies_and_a_failing_store_in_json(
    tmp_path: Path,
) -> None:
    """Deeply nested JSON is a 400, not a RecursionError; a state store that fails is a JSON
    503 the caller can retry, not an HTML 500 with a traceback in the log."""
    from structlog.testing import capture_logs

    from orderwatch.core.errors import StoreError

    port = free_port()
    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        settings = settings_for(tmp_path, rs.base_url, admin={"listen": f"127.0.0.1:{port}"})
        base = f"http://127.0.0.1:{port}"
        async with running_daemon(settings) as d:
            status, text = await http(
                "POST",
                f"{base}/orders",
                data=b"[" * 100_000,
                headers={"Content-Type": "application/json"},
            )
            assert status == 400 and json.loads(text)["error"].startswith("body must be JSON")

            async def broken(*_a: object, **_k: object) -> object:
                raise StoreError("state database: disk I/O error")

            store = d.store
            assert store is not None
            store.add_orders, store.get_orders = broken, broken  # type: ignore[method-assign,assignment]
            with capture_logs() as logs:
                posted = await http("POST", f"{base}/orders", json={"ids": ["O-1"]})
                got = await http("GET", f"{base}/orders/O-1")
    for status, text in (posted, got):
        assert status == 503, (status, text)
        assert json.loads(text) == {"error": "the state store is unavailable; try again"}
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["store.unavailable"] * 2
