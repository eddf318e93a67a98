"""The Runa client: one request per call, never a hidden retry."""

from __future__ import annotations

from orderwatch.answers import Kind
from orderwatch.client import RunaClient
from orderwatch.simulator import SimOptions, running_simulator


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
    from aiohttp import web
    from aiohttp.test_utils import TestServer

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
