"""Poison orders: an answer that cannot be applied costs that order an error back-off, and
give_up_after ends it; it never writes a payload it cannot send, nor crashes at every lease."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import structlog
from aiohttp import web

from orderwatch.polling.client import RunaClient
from orderwatch.polling.gate import Gate
from orderwatch.polling.limiter import SpacedLimiter
from orderwatch.polling.scheduler import Poller, PollerDeps
from orderwatch.store.base import Claim, EventRecord, OrderState
from orderwatch.store.sqlite import SqliteStore

from harness import API_KEY, changes_of, running_daemon, settings_for, until


@asynccontextmanager
async def answering(
    body: Callable[[str], bytes],
) -> AsyncIterator[tuple[str, list[str]]]:
    """A stand-in Runa answering each order with `body(order_id)`; yields its base URL and
    the ids asked for, in order."""
    asked: list[str] = []

    async def order(request: web.Request) -> web.Response:
        asked.append(order_id := request.match_info["id"])
        return web.Response(body=body(order_id), content_type="application/json")

    app = web.Application()
    app.router.add_get("/v2/order/{id}", order)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v2", asked
    finally:
        await runner.cleanup()


def deep_body(order_id: str) -> bytes:
    """COMPLETED, with `x` nested as deep as the id says (O-D985: 985 arrays)."""
    levels = int(order_id.removeprefix("O-D"))
    return b'{"id": "%s", "status": "COMPLETED", "items": [], "x": %s%s}' % (
        order_id.encode(),
        b"[" * levels,
        b"]" * levels,
    )


async def test_a_final_body_too_deep_for_an_event_is_a_bad_answer(tmp_path: Path) -> None:
    """A COMPLETED body nested ~985 deep parsed, its file was written, then building the event
    raised RecursionError: a traceback at every lease, forever, no event. It is now a bad
    answer: no file, retried on the error back-off, and expired at give_up_after. (Depths
    around the parser's limit, as how deep it parses depends on the stack it runs on.)"""
    ids = [f"O-D{n}" for n in range(940, 1000)]
    async with answering(deep_body) as (base, asked):
        settings = settings_for(tmp_path, base, polling={"give_up_after": "3s"})
        with structlog.testing.capture_logs() as logs:
            async with running_daemon(settings) as d:
                assert d.store is not None
                store = d.store
                await d.add_orders(ids)

                async def ended() -> bool:
                    return all(r.state != "pending" for r in await store.get_orders(ids))

                await until(ended, *changes_of(d), timeout=30)
                rows = await store.get_orders(ids)
                events = [await store.get_event(i) for i in ids]
    assert not [e for e in logs if e["event"] == "poll.crashed"]
    assert {(r.state, r.final_status) for r in rows} == {("expired", "EXPIRED")}
    assert all(r.error_streak >= 1 for r in rows)  # every answer counted as an error
    assert all(asked.count(i) >= 2 for i in ids)  # ...and retried
    assert {e.event_type if e else None for e in events} == {"order.expired"}
    assert all(e and json.loads(e.body)["data"]["last_response"] is None for e in events)
    assert not list(settings.output_dir.glob("*.json"))


class FinalCrashes(SqliteStore):
    """A store with a bug in committing a final answer (expired and not_found still work)."""

    async def finish(
        self,
        claim: Claim,
        state: OrderState,
        final_status: str,
        event: EventRecord,
        sinks: Sequence[str],
    ) -> bool:
        if state == "final":
            raise RuntimeError("a bug applying the answer")
        return await super().finish(claim, state, final_status, event, sinks)


async def test_a_crash_applying_an_answer_backs_off_and_ends_at_give_up_after(
    tmp_path: Path,
) -> None:
    """A bug that crashes applying one order's answer cost one poll and came back at every
    lease's end, forever: give_up_after never ended it. A crash now counts as an error of
    that order (its streak, its back-off), and past give_up_after the order expires."""
    body = b'{"id": "O-BUG", "status": "COMPLETED", "items": []}'
    settings = settings_for(tmp_path, "http://127.0.0.1:1/v2", polling={"give_up_after": "3s"})
    store = await FinalCrashes.open(tmp_path / "state", daemon=True, now=time.time())
    stop = asyncio.Event()
    try:
        async with (
            answering(lambda _: body) as (base, asked),
            RunaClient(
                base, API_KEY, api_version="2024-02-05", timeout_s=2.0, max_connections=1
            ) as client,
        ):
            poller = Poller(
                PollerDeps(
                    store=store,
                    client=client,
                    limiter=SpacedLimiter(1000),
                    gate=Gate(max_interval_s=1.0),
                    polling=settings.polling,
                    output_dir=settings.output_dir,
                    sinks=[],
                    owner="t",
                    max_concurrency=1,
                    rate=1000,
                    request_timeout_s=2.0,
                )
            )
            settings.output_dir.mkdir(mode=0o700)
            await store.add_orders(["O-BUG"], time.time(), time.time())

            async def ended() -> bool:
                (row,) = await store.get_orders(["O-BUG"])
                return row.state != "pending"

            with structlog.testing.capture_logs() as logs:
                run = asyncio.create_task(poller.run(stop, 2.0))
                await until(ended, poller.d.progress, timeout=30)
                stop.set()
                await run
        (row,) = await store.get_orders(["O-BUG"])
        event = await store.get_event("O-BUG")
    finally:
        stop.set()
        await store.close()
    crashes = [e for e in logs if e["event"] == "poll.crashed"]
    assert (row.state, row.final_status) == ("expired", "EXPIRED")
    assert event is not None and event.event_type == "order.expired"
    assert len(crashes) == len(asked) >= 2  # each answer crashed, and each was retried
    assert all(e["order_id"] == "O-BUG" for e in crashes)
    assert not (settings.output_dir / "O-BUG.json").exists()  # expired: no payload stays
