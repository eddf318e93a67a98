"""Delivery: Standard Webhooks signatures, retries under one id, dead letters and replay,
isolation of a hanging endpoint. Real receivers on port 0, the real SQLite store."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from orderwatch.config import load_settings_from_mapping
from orderwatch.delivery import Deliverer
from orderwatch.events import make_event
from orderwatch.receiver import Receiver, running_receiver
from orderwatch.simulator import SimOptions, running_simulator
from orderwatch.sinks import build_sinks
from orderwatch.store.sqlite import SqliteStore

from harness import API_KEY, SECRET, running_daemon, settings_for, until

OLD_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
PAYLOAD = {"id": "O-1", "status": "COMPLETED", "items": [{"payout": {"url": "https://p/x"}}]}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await SqliteStore.open(tmp_path / "state", daemon=True, now=time.time())
    yield s
    await s.close()


def hook_settings(tmp_path: Path, url: str, **hook: object) -> object:
    return load_settings_from_mapping(
        {
            "state_dir": str(tmp_path / "state"),
            "output_dir": str(tmp_path / "orders"),
            "webhooks": [
                {"url": url, "secret": SECRET, "retry_schedule": [0.05, 0.05, 0.05], **hook}
            ],
        }
    )


async def queue_final(store: SqliteStore, order_id: str, sinks: list[str]) -> str:
    now = time.time()
    await store.add_orders([order_id], now, now)
    (claim,) = await store.claim_due(now, 1, "t", 60)
    event = make_event(order_id, "COMPLETED", {**PAYLOAD, "id": order_id}, now)
    assert await store.finish(claim, "final", "COMPLETED", event, sinks)
    return event.event_id


async def deliver_until_settled(deliverer: Deliverer, store: SqliteStore) -> None:
    async def settled() -> bool:
        await deliverer.run_until_idle()
        return (await store.delivery_counts())["pending"] == 0

    await until(settled, timeout=10)


async def test_reference_library_verifies_every_signature_with_rotation(
    tmp_path: Path, store: SqliteStore
) -> None:
    """With two secrets configured, the reference standardwebhooks library verifies each
    delivery under either secret alone; body is {type, timestamp, data}."""
    receiver = Receiver(SECRET)
    async with running_receiver(receiver) as url:
        sinks = build_sinks(hook_settings(tmp_path, url, secrets=[OLD_SECRET]))  # type: ignore[arg-type]
        ids = [await queue_final(store, f"O-{i}", [s.id for s in sinks]) for i in range(5)]
        await deliver_until_settled(Deliverer(store, sinks, owner="t"), store)
        for s in sinks:
            await s.close()
    assert [e.event_id for e in receiver.events] == ids
    for got in receiver.events:
        assert got.verified
        for secret in (SECRET, OLD_SECRET):
            Webhook(secret).verify(got.body, got.headers)  # raises if not valid
        assert len(got.headers["webhook-signature"].split(" ")) == 2
        body = json.loads(got.body)
        assert body["type"] == "order.completed" and body["data"]["id"] == got.order_id
        assert set(body) == {"type", "timestamp", "data"}


async def test_failing_first_attempts_then_delivered_under_same_id(
    tmp_path: Path, store: SqliteStore
) -> None:
    """A receiver failing the first 2 attempts gets the event on attempt 3, same webhook-id."""
    receiver = Receiver(SECRET, fail_first=2, fail_status=503)
    async with running_receiver(receiver) as url:
        sinks = build_sinks(hook_settings(tmp_path, url))  # type: ignore[arg-type]
        event_id = await queue_final(store, "O-R", [s.id for s in sinks])
        await deliver_until_settled(Deliverer(store, sinks, owner="t"), store)
        for s in sinks:
            await s.close()
    assert receiver.attempt_ids == [event_id] * 3
    (row,) = await store.get_deliveries(["O-R"])
    assert (row.state, row.attempts, row.last_outcome) == ("delivered", 3, "http 204")


async def test_dead_after_schedule_then_replay_same_id(tmp_path: Path, store: SqliteStore) -> None:
    """A receiver down for the whole schedule leaves a dead delivery; replay delivers it later
    under the same id."""
    receiver = Receiver(SECRET, fail_first=10**6, fail_status=500)
    async with running_receiver(receiver) as url:
        sinks = build_sinks(hook_settings(tmp_path, url))  # type: ignore[arg-type]
        event_id = await queue_final(store, "O-D", [s.id for s in sinks])
        deliverer = Deliverer(store, sinks, owner="t")
        await deliver_until_settled(deliverer, store)
        (row,) = await store.get_deliveries(["O-D"])
        assert (row.state, row.attempts) == ("dead", 4)  # 3 delays give 4 attempts
        receiver.fail_first = 0
        assert await store.replay(["O-D"], [s.id for s in sinks], time.time()) == 1
        await deliver_until_settled(deliverer, store)
        for s in sinks:
            await s.close()
    assert receiver.attempt_ids == [event_id] * 5
    assert [e.event_id for e in receiver.events] == [event_id]
    (row,) = await store.get_deliveries(["O-D"])
    assert row.state == "delivered"


async def test_410_disables_and_redirect_is_a_failure(tmp_path: Path, store: SqliteStore) -> None:
    """410 Gone disables the endpoint at once; a 302 counts as a failed attempt."""
    gone = Receiver(SECRET, fail_first=10**6, fail_status=410)
    moved = Receiver(SECRET, fail_first=10**6, fail_status=302)
    async with running_receiver(gone) as url1, running_receiver(moved) as url2:
        settings = load_settings_from_mapping(
            {
                "webhooks": [
                    {"url": url1, "secret": SECRET, "retry_schedule": [0.05]},
                    {"url": url2, "secret": SECRET, "retry_schedule": [0.05]},
                ],
            }
        )
        sinks = build_sinks(settings)
        await queue_final(store, "O-G", [s.id for s in sinks])
        await deliver_until_settled(Deliverer(store, sinks, owner="t"), store)
        for s in sinks:
            await s.close()
    rows = {r.sink: r for r in await store.get_deliveries(["O-G"])}
    assert (rows[sinks[0].id].state, rows[sinks[0].id].attempts) == ("disabled", 1)
    assert (rows[sinks[1].id].state, rows[sinks[1].id].attempts) == ("dead", 2)
    assert rows[sinks[1].id].last_outcome == "http 302"


async def test_hanging_endpoint_does_not_slow_polling_or_a_healthy_one(tmp_path: Path) -> None:
    """One endpoint never answers: every order still ends final and the healthy endpoint gets
    every event, while the hanging one holds at most its concurrency in flight."""
    healthy, hanging = Receiver(SECRET), Receiver(SECRET)
    hanging.hang = True
    ids = [f"O-H{i:02d}" for i in range(30)]
    async with (
        running_simulator(SimOptions(api_key=API_KEY, complete_after=0)) as rs,
        running_receiver(healthy) as good_url,
        running_receiver(hanging) as bad_url,
    ):
        settings = settings_for(
            tmp_path,
            rs.base_url,
            webhooks=[
                {"url": bad_url, "secret": SECRET, "timeout": "60s", "max_concurrency": 2},
                {"url": good_url, "secret": SECRET},
            ],
        )
        async with running_daemon(settings) as d:
            await d.add_orders(ids)

            async def all_heard() -> bool:
                return {e.order_id for e in healthy.events} == set(ids)

            await until(all_heard, timeout=20)
            assert (await d.store.counts())["final"] == len(ids)  # type: ignore[union-attr]
            assert hanging.attempts == 2  # its concurrency bound, nothing more
