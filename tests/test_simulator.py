"""The simulator itself: what tests and benchmarks rely on it to do."""

from __future__ import annotations

from collections import deque

import aiohttp
import pytest

from orderwatch.devtools.sim_list import ListFaults
from orderwatch.devtools.simulator import Faults, SimOptions, running_simulator

KEY = "xx.sim"


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def get(url: str, key: str = KEY, timeout: float = 5) -> tuple[int, object, dict[str, str]]:
    t = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=t) as s:
        s._retry_connection = False  # else aiohttp silently re-sends after a reset
        async with s.get(url, headers={"X-Api-Key": key}) as r:
            ctype = r.content_type
            body = (
                await r.json(content_type=None) if ctype == "application/json" else await r.text()
            )
            return r.status, body, dict(r.headers)


async def test_processing_then_final_on_a_fake_clock() -> None:
    """An order is PROCESSING until complete_after has passed, then final and stable."""
    clock = FakeClock()
    async with running_simulator(SimOptions(api_key=KEY, complete_after=10), clock=clock) as rs:
        status, body, _ = await get(f"{rs.base_url}/order/O-A")
        assert status == 200 and body == {
            "id": "O-A",
            "status": "PROCESSING",
            "message": "Order is being processed",
        }
        clock.t = 10
        _, first, _ = await get(f"{rs.base_url}/order/O-A")
        _, again, _ = await get(f"{rs.base_url}/order/O-A")
        assert first == again == rs.sim.payload("O-A")
        assert isinstance(first, dict)
        assert first["status"] == "COMPLETED" and first["items"][0]["payout"]["url"].startswith(
            "https://"
        )


async def test_fail_ratio_and_not_found() -> None:
    """fail_ratio 1 fails every order; the 404 prefix is never found; not_found_for delays."""
    clock = FakeClock()
    opts = SimOptions(api_key=KEY, complete_after=0, fail_ratio=1.0, not_found_for=5)
    async with running_simulator(opts, clock=clock) as rs:
        assert (await get(f"{rs.base_url}/order/O-404x"))[0] == 404
        status, body, _ = await get(f"{rs.base_url}/order/O-B")
        assert status == 404 and body["type"] == "not_found"  # type: ignore[index]
        clock.t = 5
        status, body, _ = await get(f"{rs.base_url}/order/O-B")
        assert status == 200 and body["status"] == "FAILED"  # type: ignore[index]


async def test_wrong_key_and_bad_key_fault() -> None:
    """A wrong key gets 401; the bad_key fault refuses every key."""
    async with running_simulator(SimOptions(api_key=KEY)) as rs:
        assert (await get(f"{rs.base_url}/order/O-C", key="xx.wrong"))[0] == 401
        assert (await get(f"{rs.base_url}/ping"))[1] == {"message": "pong"}
        rs.sim.set_faults(Faults(bad_key=True))
        assert (await get(f"{rs.base_url}/order/O-C"))[0] == 401


async def test_scripted_faults_in_order() -> None:
    """Scripted answers come in order: 429 with Retry-After, 500, malformed, reset, then ok."""
    async with running_simulator(SimOptions(api_key=KEY, faults=Faults(retry_after="3"))) as rs:
        rs.sim.script("429", "500", "malformed", "reset", "timeout", "ok")
        url = f"{rs.base_url}/order/O-D"
        status, body, headers = await get(url)
        assert (status, body, headers["Retry-After"]) == (429, {"error": "rate exceeded"}, "3")
        assert (await get(url))[0] == 500
        status, body, _ = await get(url)
        assert status == 200 and (not isinstance(body, dict) or body.get("id") != "O-D")
        with pytest.raises(aiohttp.ClientError):
            await get(url)
        with pytest.raises(TimeoutError):
            await get(url, timeout=0.3)
        assert (await get(url))[1]["status"] == "PROCESSING"  # type: ignore[index]


async def test_arrivals_and_max_in_window() -> None:
    """Every order request is recorded; max_in_window counts a half-open 1 s window."""
    async with running_simulator(SimOptions()) as rs:
        rs.sim.arrivals.extend([0.0, 0.5, 0.999, 1.0, 1.5, 3.0])
        assert rs.sim.max_in_window(1.0) == 3  # [0.5, 1.5) holds 0.5, 0.999, 1.0; 1.5 is out
        rs.sim.arrivals.append(1.4)
        assert rs.sim.max_in_window(1.0) == 4
        rs.sim.arrivals.clear()
        await get(f"{rs.base_url}/order/O-E")
        assert len(rs.sim.arrivals) == 1


async def test_control_endpoints() -> None:
    """Orders can be pre-created, completed and faults replaced over HTTP (for benchmarks)."""
    async with running_simulator(SimOptions(complete_after=3600)) as rs:
        root = rs.base_url.removesuffix("/v2")
        async with aiohttp.ClientSession() as s:
            await s.post(f"{root}/_sim/orders", json={"ids": ["O-F"], "complete_after": 3600})
            await s.post(f"{root}/_sim/complete", json={"ids": ["O-F"], "status": "FAILED"})
            async with s.get(f"{rs.base_url}/order/O-F") as r:
                assert (await r.json())["status"] == "FAILED"
            async with s.get(f"{root}/_sim/stats") as r:
                stats = await r.json()
        assert stats["count"] == 1 and stats["max_in_window"] == 1


async def test_stats_count_every_request_past_the_arrival_log() -> None:
    """`count` is every order request ever answered, not the length of the arrival log
    (capped at a million): a fast machine's overhead bench passed the cap and read 0/s."""
    async with running_simulator(SimOptions(complete_after=3600)) as rs:
        rs.sim.arrivals = deque(maxlen=2)  # the cap, made small
        for _ in range(3):
            await get(f"{rs.base_url}/order/O-C")
        root = rs.base_url.removesuffix("/v2")
        async with aiohttp.ClientSession() as s, s.get(f"{root}/_sim/stats") as r:
            stats = await r.json()
        assert stats["count"] == 3


async def test_list_pages_newest_first_with_cursors() -> None:
    """GET /order lists newest first; `after` and `before` page on from an edge; history
    orders come after the tracked ones; bad cursors and limits are 400 pagination_error."""
    async with running_simulator(SimOptions(complete_after=3600, history=7)) as rs:
        rs.sim.create(["O-L1", "O-L2", "O-L3"])
        _, first, _ = await get(f"{rs.base_url}/order?limit=2")
        assert [i["id"] for i in first["items"]] == ["O-L3", "O-L2"]  # type: ignore[index]
        after = first["pagination"]["cursors"]["after"]  # type: ignore[index]
        _, rest, _ = await get(f"{rs.base_url}/order?limit=500&after={after}")
        ids = [i["id"] for i in rest["items"]]  # type: ignore[index]
        assert ids[0] == "O-L1" and len(ids) == 8 and all(i.startswith("O-0") for i in ids[1:])
        assert all(i["status"] in ("COMPLETED", "FAILED") for i in rest["items"][1:])  # type: ignore[index]
        _, back, _ = await get(f"{rs.base_url}/order?limit=5&before=O-L1")
        assert [i["id"] for i in back["items"]] == ["O-L3", "O-L2"]  # type: ignore[index]
        _, tail, _ = await get(f"{rs.base_url}/order?after={ids[-1]}")
        assert tail == {"items": [], "pagination": {"cursors": {}, "page": {"limit": 100}}}
        for query in ("limit=0", "limit=501", "limit=x", "after=O-NONE", "after=O-L1&before=O-L2"):
            status, body, _ = await get(f"{rs.base_url}/order?{query}")
            assert (status, body["type"]) == (400, "pagination_error"), query  # type: ignore[index]
        stats = rs.sim.list.received, len(rs.sim.arrivals), rs.sim.received
        assert stats == (9, 9, 0)  # list requests arrive like any other; GETs are counted apart


async def test_list_faults_apply_to_the_list_only() -> None:
    """A key that may not list gets 403 on the list while GET /order/{id} answers; scripted
    list faults come in order; the list may be made to disagree with GET."""
    async with running_simulator(SimOptions(api_key=KEY, complete_after=3600)) as rs:
        rs.sim.create(["O-LF"])
        rs.sim.set_list_faults(ListFaults(forbidden=True))
        assert (await get(f"{rs.base_url}/order"))[0] == 403
        assert (await get(f"{rs.base_url}/order/O-LF"))[0] == 200
        rs.sim.set_list_faults(ListFaults())
        rs.sim.script_list("500", "malformed", "pagination_error", "429", "empty", "ok")
        codes = [(await get(f"{rs.base_url}/order"))[0] for _ in range(6)]
        assert codes == [500, 200, 400, 429, 200, 200]
        rs.sim.list.list_status["O-LF"] = "COMPLETED"
        _, page, _ = await get(f"{rs.base_url}/order")
        assert page["items"][0]["status"] == "COMPLETED"  # type: ignore[index]
        assert (await get(f"{rs.base_url}/order/O-LF"))[1]["status"] == "PROCESSING"  # type: ignore[index]
