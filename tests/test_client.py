"""The Runa client: one request per call, never a hidden retry."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer

from orderwatch.devtools.simulator import SimOptions, max_in_window, running_simulator
from orderwatch.polling.answers import Answer, Kind
from orderwatch.polling.client import SWEEP_S, RunaClient
from orderwatch.polling.limiter import SpacedLimiter


class LoopbackResolver(AbstractResolver):
    """Every name is 127.0.0.1, after `before(n)` for the n-th lookup (from 1): how long
    opening a connection takes, short of the network."""

    def __init__(self, before: Callable[[int], Awaitable[None]]) -> None:
        self.before = before
        self.lookups = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups += 1
        await self.before(self.lookups)
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        pass


def by_name(base_url: str) -> str:
    """The same server, named so that opening a connection asks the resolver."""
    return base_url.replace("127.0.0.1", "runa.test")


async def test_connection_reset_is_not_resent_behind_the_limiter() -> None:
    """After a reset the client reports a transport error; the server saw exactly one GET
    (aiohttp's own silent re-send would be a request the limiter never counted)."""
    async with running_simulator(SimOptions(api_key="xx.k")) as rs:
        rs.sim.script("reset")
        async with RunaClient(
            rs.base_url, "xx.k", api_version="2024-02-05", timeout_s=2, max_connections=1
        ) as client:
            answer = await client.get_order("O-1")
    assert answer.kind is Kind.TRANSPORT
    assert len(rs.sim.arrivals) == 1


async def test_headers_sent() -> None:
    """X-Api-Key and X-Api-Version go with every request; a wrong key is an auth answer."""
    async with (
        running_simulator(SimOptions(api_key="xx.k")) as rs,
        RunaClient(
            rs.base_url, "xx.other", api_version="2024-02-05", timeout_s=2, max_connections=1
        ) as client,
    ):
        assert (await client.get_order("O-1")).kind is Kind.AUTH
        client.set_api_key("xx.k")
        assert (await client.get_order("O-1")).kind is Kind.PROCESSING


async def test_cookies_from_the_api_are_not_kept() -> None:
    """A Set-Cookie in an answer is not sent back: the client keeps no cookie jar."""

    seen: list[str | None] = []

    async def order(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        oid = request.match_info["id"]
        resp = web.json_response({"id": oid, "status": "PROCESSING"})
        resp.set_cookie("session", "s3cret")
        return resp

    app = web.Application()
    app.router.add_get("/v2/order/{id}", order)
    async with TestServer(app, host="127.0.0.1") as server:
        # By name: aiohttp's default jar ignores cookies from IP-address hosts.
        base = f"http://localhost:{server.port}/v2"
        async with RunaClient(
            base, "xx.k", api_version="2024-02-05", timeout_s=2, max_connections=1
        ) as client:
            for _ in range(2):
                assert (await client.get_order("O-1")).kind is Kind.PROCESSING
    assert seen == [None, None]


@pytest.mark.serial
async def test_a_late_connection_cannot_bunch_sends_at_the_server() -> None:
    """At 2/s, the first GET's connection takes 0.3 s to open (a stalled loop, a slow
    handshake): the limiter counted it when it was granted, so the third GET, granted a
    window later, reached the server with the first two in under a second. The client now
    confirms each send with the limiter once its connection is ready."""

    async def slow_first(lookup: int) -> None:
        if lookup == 1:
            await asyncio.sleep(0.3)

    limiter = SpacedLimiter(2, start_full=False)
    async with running_simulator(SimOptions(api_key="xx.k")) as rs:
        async with RunaClient(
            by_name(rs.base_url),
            "xx.k",
            api_version="2024-02-05",
            timeout_s=5,
            max_connections=4,
            before_send=limiter.confirm,
            resolver=LoopbackResolver(slow_first),
        ) as client:

            async def send(order_id: str) -> None:
                await limiter.acquire()
                await client.get_order(order_id)

            await asyncio.gather(*(send(f"O-{i}") for i in range(3)))
        arrivals = sorted(rs.sim.arrivals)
    assert len(arrivals) == 3
    assert max_in_window(arrivals, 1.0) <= 2, [round(t - arrivals[0], 3) for t in arrivals]


@pytest.mark.parametrize("slash", ["", "/"])
async def test_order_urls_under_the_base_path(slash: str) -> None:
    """The order URL is {base}/order/{id}, with or without a trailing slash on the base."""
    async with (
        running_simulator(SimOptions(api_key="xx.k")) as rs,
        RunaClient(
            rs.base_url + slash, "xx.k", api_version="2024-02-05", timeout_s=2, max_connections=1
        ) as client,
    ):
        answer = await client.get_order("O-url_1")
    assert answer.kind is Kind.PROCESSING
    assert [oid for _, oid in rs.sim.requests] == ["O-url_1"]


async def test_a_body_that_arrives_in_pieces_is_read_whole() -> None:
    """A final payload larger than one read (TLS records, TCP segments) comes in pieces;
    the client reads to the end of the body, not what the first piece held."""
    import json

    items = [{"id": f"I-{i}", "redemption_url": f"https://x/{i}"} for i in range(200)]
    body = json.dumps({"id": "O-big", "status": "COMPLETED", "items": items}).encode()

    async def order(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[:100])
        await asyncio.sleep(0.05)
        await resp.write(body[100:])
        return resp

    answer = await answer_from(order, "O-big")
    assert answer.kind is Kind.FINAL, answer.detail
    assert answer.body == body


async def test_a_body_past_the_cap_is_refused_whatever_its_pieces() -> None:
    """A streamed answer (no Content-Length) larger than MAX_BODY is an invalid answer,
    not a truncated one: the cap counts every piece."""

    from orderwatch.polling.client import MAX_BODY

    piece = b" " * 65536

    async def order(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'{"id": "O-huge", "status": "COMPLETED"}')
        for _ in range(MAX_BODY // len(piece) + 1):
            await resp.write(piece)
        return resp

    answer = await answer_from(order, "O-huge")
    assert answer.kind is Kind.INVALID and answer.detail == "body too large"


async def test_a_redirect_is_not_followed() -> None:
    """A redirect (a gateway, a wrong base URL) is an invalid answer, not a second GET: that
    GET would pass no limiter, and aiohttp sends X-Api-Key on to whatever host it names."""

    elsewhere: list[str | None] = []

    async def other(request: web.Request) -> web.Response:
        elsewhere.append(request.headers.get("X-Api-Key"))
        return web.json_response({"id": request.match_info["id"], "status": "PROCESSING"})

    other_app = web.Application()
    other_app.router.add_get("/v2/order/{id}", other)
    async with TestServer(other_app, host="127.0.0.1") as target:

        async def order(request: web.Request) -> web.Response:
            raise web.HTTPFound(f"http://localhost:{target.port}/v2/order/O-R")

        answer = await answer_from(order, "O-R")
    assert answer.kind is Kind.INVALID and answer.http_status == 302
    assert elsewhere == []


async def answer_from(order: Any, order_id: str) -> Answer:
    """One get_order against a loopback server whose order route is `order`."""

    app = web.Application()
    app.router.add_get("/v2/order/{id}", order)
    async with (
        TestServer(app, host="127.0.0.1") as server,
        RunaClient(
            f"http://127.0.0.1:{server.port}/v2",
            "xx.k",
            api_version="2024-02-05",
            timeout_s=5,
            max_connections=1,
        ) as client,
    ):
        return await client.get_order(order_id)


def _hanging_server(handler_kind: str) -> TestServer:
    """An API that never finishes answering: no headers at all, or headers and then a body
    that never ends."""

    async def order(request: web.Request) -> web.StreamResponse:
        if handler_kind == "headers":
            await asyncio.sleep(3600)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b'{"id": "O-1", ')
        await asyncio.sleep(3600)
        return resp

    app = web.Application()
    app.router.add_get("/v2/order/{id}", order)
    return TestServer(app, host="127.0.0.1")


@pytest.mark.parametrize("stall", ["headers", "body"])
async def test_a_request_gives_up_at_its_timeout(stall: str) -> None:
    """The timeout is kept by one sweep for all requests (client._Deadlines), not a timer
    each: a request whose answer never comes (or whose body never ends) is a "timeout"
    between its timeout and SWEEP_S after; the task is not left cancelled, and with nothing
    in flight no timer is left behind."""
    async with _hanging_server(stall) as server:
        base = f"http://127.0.0.1:{server.port}/v2"
        async with RunaClient(
            base, "xx.k", api_version="2024-02-05", timeout_s=0.3, max_connections=2
        ) as client:
            t0 = time.monotonic()
            answer = await client.get_order("O-1")
            took = time.monotonic() - t0
            task = asyncio.current_task()
            assert task is not None and task.cancelling() == 0
            assert client.deadlines is not None and not client.deadlines.armed
    assert (answer.kind, answer.detail) == (Kind.TRANSPORT, "timeout")
    assert 0.3 <= took < 0.3 + SWEEP_S + 1.0, took


async def test_a_cancel_from_outside_is_not_taken_for_a_timeout() -> None:
    """A stop cancels a worker in the middle of its request: that must go through, also
    when it comes together with the request's own timeout (as `asyncio.timeout` has it)."""
    async with _hanging_server("headers") as server:
        base = f"http://127.0.0.1:{server.port}/v2"
        async with RunaClient(
            base, "xx.k", api_version="2024-02-05", timeout_s=0.05, max_connections=2
        ) as client:
            alone = asyncio.create_task(client.get_order("O-1"))
            both = asyncio.create_task(client.get_order("O-2"))
            await asyncio.sleep(0.1)  # both deadlines passed; the sweep has not looked yet
            alone.cancel()
            assert client.deadlines is not None
            client.deadlines.sweep()  # takes `both` for a timeout...
            both.cancel()  # ...while a stop cancels it too
            for task in (alone, both):
                with pytest.raises(asyncio.CancelledError):
                    await task


async def test_a_timeout_that_comes_out_as_another_error_leaves_the_task_clean() -> None:
    """Should a layer below turn the sweep's cancel into an error of its own (or swallow it),
    the task must not stay marked as cancelling: a later `asyncio.timeout` in it would
    misread its own expiry. Here the limiter's check as the connection opens (a shared
    limiter asks its database) hangs, and converts the cancel."""

    async def a_moment(lookup: int) -> None:
        await asyncio.sleep(0.01)  # long enough that the client asks the limiter

    async def hangs() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise ConnectionResetError("converted") from None

    async with _hanging_server("headers") as server:
        base = f"http://runa.test:{server.port}/v2"
        async with RunaClient(
            base,
            "xx.k",
            api_version="2024-02-05",
            timeout_s=0.05,
            max_connections=2,
            resolver=LoopbackResolver(a_moment),
            before_send=hangs,
        ) as client:
            answer = await client.get_order("O-1")
            task = asyncio.current_task()
            assert task is not None and task.cancelling() == 0
    assert answer.kind is Kind.TRANSPORT and answer.detail == "transport: ClientOSError"


@pytest.mark.parametrize("slash", ["", "/"])
async def test_list_orders_pages_with_the_apis_cursors(slash: str) -> None:
    """list_orders asks {base}/order with limit and one cursor, passed as the API gave it;
    every page is classified, and a refusal of the list comes back like a GET's."""
    async with (
        running_simulator(SimOptions(api_key="xx.k", complete_after=3600, history=3)) as rs,
        RunaClient(
            rs.base_url + slash, "xx.k", api_version="2024-02-05", timeout_s=2, max_connections=1
        ) as client,
    ):
        rs.sim.create(["O-C1", "O-C2"])
        first = await client.list_orders(2)
        assert first.kind is Kind.LISTED
        assert [o.order_id for o in first.data.orders] == ["O-C2", "O-C1"]
        rest = await client.list_orders(500, after=first.data.after)
        assert rest.kind is Kind.LISTED and rest.data.size == 3
        assert all(o.status in ("COMPLETED", "FAILED") and o.created_at for o in rest.data.orders)
        back = await client.list_orders(1, before=rest.data.before)
        assert [o.order_id for o in back.data.orders] == ["O-C1"]
        bad = await client.list_orders(500, after="O-NO SUCH&limit=1")
        rs.sim.script_list("403")
        refused = await client.list_orders(500)
    assert (bad.kind, bad.detail) == (Kind.INVALID, "http 400 pagination_error")
    assert (refused.kind, refused.http_status) == (Kind.AUTH, 403)
    queries = [q for _, q in rs.sim.list.requests]
    assert queries[:3] == [
        "limit=2",
        f"limit=500&after={first.data.after}",
        f"limit=1&before={rest.data.before}",
    ]
    assert parse_qs(queries[3]) == {"limit": ["500"], "after": ["O-NO SUCH&limit=1"]}
