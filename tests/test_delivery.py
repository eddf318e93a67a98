"""Delivery: Standard Webhooks signatures, retries under one id on the schedule, dead letters
and replay, 410 and redirects (failures like any other), isolation of a hanging endpoint, the
run loop's wake-ups and shutdown, callbacks. Real receivers on port 0, the real SQLite store,
an injected clock."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
from standardwebhooks.webhooks import Webhook

from orderwatch.config.callbacks import load_callable
from orderwatch.config.load import load_settings_from_mapping
from orderwatch.config.models import Settings
from orderwatch.core.errors import UsageError
from orderwatch.delivery.events import make_event
from orderwatch.delivery.outbox import Deliverer
from orderwatch.delivery.sinks import Sink, build_sinks
from orderwatch.delivery.sinks.callback import CallbackSink
from orderwatch.devtools.receiver import Receiver, running_receiver
from orderwatch.devtools.simulator import SimOptions, running_simulator
from orderwatch.store.sqlite import SqliteStore

from harness import API_KEY, SECRET, FakeClock, logged, running_daemon, settings_for, until

OLD_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
PAYOUT = "https://payouts.example/redeem/very-secret-link"
PAYLOAD = {"id": "O-1", "status": "COMPLETED", "items": [{"payout": {"url": PAYOUT}}]}


@pytest.fixture
def store(sqlite_store: SqliteStore) -> SqliteStore:
    return sqlite_store


def hook_settings(*hooks: dict[str, Any], **top: Any) -> Settings:
    return load_settings_from_mapping(
        {"webhooks": [{"secret": SECRET, "retry_schedule": [0.05] * 3, **h} for h in hooks], **top}
    )


async def queue_final(store: SqliteStore, order_id: str, sinks: list[Sink], now: float) -> str:
    await store.add_orders([order_id], now, now)
    (claim,) = await store.claim_due(now, 1, "t", 60)
    event = make_event(order_id, "COMPLETED", {**PAYLOAD, "id": order_id}, now)
    assert await store.finish(claim, "final", "COMPLETED", event, [s.id for s in sinks])
    return event.event_id


async def close_all(sinks: list[Sink]) -> None:
    for s in sinks:
        await s.close()


async def deliver_until_settled(deliverer: Deliverer, store: SqliteStore) -> None:
    """run_until_idle, then wait for the next retry to fall due (real short delays), until
    nothing is pending."""
    sinks = [s.id for s in deliverer.sinks]
    async with asyncio.timeout(10):
        while True:
            await deliverer.run_until_idle()
            if (await store.delivery_counts())["pending"] == 0:
                return
            due = await store.next_delivery_due_at(sinks)
            assert due is not None
            await asyncio.sleep(max(0.0, due - deliverer.clock()))  # the retry's own time


async def row(store: SqliteStore, order_id: str) -> tuple[str, int, str | None]:
    (r,) = await store.get_deliveries([order_id])
    return r.state, r.attempts, r.last_outcome


async def test_reference_library_verifies_every_signature_with_rotation(store: SqliteStore) -> None:
    """With two secrets configured, the reference standardwebhooks library verifies each
    delivery under either secret alone; the body is {type, timestamp, data}."""
    receiver = Receiver(SECRET)
    async with running_receiver(receiver) as url:
        sinks = build_sinks(hook_settings({"url": url, "secrets": [OLD_SECRET]}))
        ids = [await queue_final(store, f"O-{i}", sinks, time.time()) for i in range(5)]
        await deliver_until_settled(Deliverer(store, sinks, owner="t"), store)
        await close_all(sinks)
    assert sorted(e.event_id for e in receiver.events) == sorted(ids)
    for got in receiver.events:
        assert got.verified
        for secret in (SECRET, OLD_SECRET):
            Webhook(secret).verify(got.body, got.headers)  # raises if not valid
        assert len(got.headers["webhook-signature"].split(" ")) == 2
        body = json.loads(got.body)
        assert body["type"] == "order.completed" and body["data"]["id"] == got.order_id
        assert set(body) == {"type", "timestamp", "data"}


async def test_failing_first_attempts_then_delivered_under_same_id(store: SqliteStore) -> None:
    """A receiver failing the first 2 attempts gets the event on attempt 3, same webhook-id."""
    receiver = Receiver(SECRET, fail_first=2, fail_status=503)
    async with running_receiver(receiver) as url:
        sinks = build_sinks(hook_settings({"url": url}))
        event_id = await queue_final(store, "O-R", sinks, time.time())
        await deliver_until_settled(Deliverer(store, sinks, owner="t"), store)
        await close_all(sinks)
    assert receiver.attempt_ids == [event_id] * 3
    assert await row(store, "O-R") == ("delivered", 3, "http 204")


async def test_each_retry_waits_its_delay_then_dead_on_an_injected_clock(
    store: SqliteStore,
) -> None:
    """Schedule [30, 60]: attempt 2 not before +30 s, attempt 3 not before +60 s more, then
    dead (2 delays give 3 attempts); nothing is sent while the clock stands still."""
    clock = FakeClock()
    receiver = Receiver(SECRET, fail_first=10**6, fail_status=503)
    async with running_receiver(receiver) as url:
        sinks = build_sinks(hook_settings({"url": url, "retry_schedule": [30, 60]}), clock=clock)
        await queue_final(store, "O-S", sinks, clock.now)
        deliverer = Deliverer(store, sinks, owner="t", clock=clock)
        for delay in (30.0, 60.0):
            await deliverer.run_until_idle()
            (r,) = await store.get_deliveries(["O-S"])
            assert r.state == "pending" and r.next_attempt_at == pytest.approx(clock.now + delay)
            attempts = receiver.attempts
            clock.now += delay - 1
            await deliverer.run_until_idle()
            assert receiver.attempts == attempts  # not due yet
            clock.now += 1
        await deliverer.run_until_idle()
        await close_all(sinks)
    assert receiver.attempts == 3
    assert await row(store, "O-S") == ("dead", 3, "http 503")


async def test_retry_after_lengthens_the_delay(store: SqliteStore) -> None:
    """A 429 with Retry-After: 120 puts the next attempt 120 s out, not the schedule's 0.05 s;
    then the event arrives under the same id."""
    clock = FakeClock()
    receiver = Receiver(SECRET, fail_first=1, fail_status=429, fail_headers={"Retry-After": "120"})
    async with running_receiver(receiver) as url:
        sinks = build_sinks(hook_settings({"url": url}), clock=clock)
        event_id = await queue_final(store, "O-RA", sinks, clock.now)
        deliverer = Deliverer(store, sinks, owner="t", clock=clock)
        await deliverer.run_until_idle()
        (r,) = await store.get_deliveries(["O-RA"])
        assert r.next_attempt_at == pytest.approx(clock.now + 120)
        clock.now += 119
        await deliverer.run_until_idle()
        assert receiver.attempts == 1
        clock.now += 1
        await deliverer.run_until_idle()
        await close_all(sinks)
    assert receiver.attempt_ids == [event_id, event_id]
    assert await row(store, "O-RA") == ("delivered", 2, "http 204")


async def test_dead_after_schedule_then_replay_same_id(store: SqliteStore) -> None:
    """A receiver down for the whole schedule leaves a dead delivery; replay delivers it later
    under the same id and the same bytes."""
    receiver = Receiver(SECRET, fail_first=10**6, fail_status=500)
    async with running_receiver(receiver) as url:
        sinks = build_sinks(hook_settings({"url": url}))
        event_id = await queue_final(store, "O-D", sinks, time.time())
        deliverer = Deliverer(store, sinks, owner="t")
        await deliver_until_settled(deliverer, store)
        assert (await row(store, "O-D"))[:2] == ("dead", 4)  # 3 delays give 4 attempts
        receiver.fail_first = 0
        assert await store.replay(["O-D"], [s.id for s in sinks], time.time()) == 1
        await deliverer.run_until_idle()
        await close_all(sinks)
    assert receiver.attempt_ids == [event_id] * 5
    assert [e.event_id for e in receiver.events] == [event_id]
    event = await store.get_event("O-D")
    assert event is not None and receiver.events[0].body == event.body
    assert (await row(store, "O-D"))[0] == "delivered"


async def test_410_and_redirects_are_failures_retried_then_dead(store: SqliteStore) -> None:
    """SPEC: any 2xx is delivered, anything else retried on the schedule, then dead. A 410
    Gone is no exception (it disabled the endpoint until a restart, so even a replay was not
    sent), and a 302 counts as a failed attempt and is never followed."""
    gone = Receiver(SECRET, fail_first=10**6, fail_status=410)
    target = Receiver(SECRET)
    async with running_receiver(gone) as url1, running_receiver(target) as target_url:
        moved = Receiver(
            SECRET, fail_first=10**6, fail_status=302, fail_headers={"Location": target_url}
        )
        async with running_receiver(moved) as url2:
            settings = hook_settings(
                {"url": url1, "retry_schedule": [0.05], "max_concurrency": 1},
                {"url": url2, "retry_schedule": [0.05]},
            )
            sinks = build_sinks(settings)
            for oid in ("O-G1", "O-G2"):
                await queue_final(store, oid, sinks, time.time())
            deliverer = Deliverer(store, sinks, owner="t")
            await deliver_until_settled(deliverer, store)
            await close_all(sinks)
    rows = await store.get_deliveries(["O-G1", "O-G2"])
    assert sorted((r.state, r.attempts, r.last_outcome) for r in rows if r.sink == sinks[0].id) == [
        ("dead", 2, "http 410"),
        ("dead", 2, "http 410"),
    ]
    assert gone.attempts == 4
    moved_rows = [r for r in rows if r.sink == sinks[1].id]
    assert {(r.state, r.attempts, r.last_outcome) for r in moved_rows} == {("dead", 2, "http 302")}
    assert target.attempts == 0


async def deliver_until_settled_for(deliverer: Deliverer, store: SqliteStore, sink: Sink) -> None:
    """Like deliver_until_settled, for one sink's deliveries only."""
    async with asyncio.timeout(10):
        while True:
            await deliverer.run_until_idle()
            due = await store.next_delivery_due_at([sink.id])
            if due is None:
                return
            await asyncio.sleep(max(0.0, due - deliverer.clock()))  # the retry's own time


async def test_attempt_log_lines_are_canonical_and_hold_no_secrets(store: SqliteStore) -> None:
    """One `delivery.attempt` line per attempt with order_id, event_id, sink, attempt, outcome,
    state; one loud `delivery.dead` at the end; no secret, query token or payout link."""
    clock = FakeClock()
    receiver = Receiver(SECRET, fail_first=10**6, fail_status=500)
    async with running_receiver(receiver) as url:
        sinks = build_sinks(
            hook_settings({"url": url + "?token=qs-secret", "retry_schedule": [1]}), clock=clock
        )
        event_id = await queue_final(store, "O-L", sinks, clock.now)
        deliverer = Deliverer(store, sinks, owner="t", clock=clock)
        with structlog.testing.capture_logs() as logs:
            await deliverer.run_until_idle()
            clock.now += 1
            await deliverer.run_until_idle()
        await close_all(sinks)
    attempts = [e for e in logs if e["event"] == "delivery.attempt"]
    assert [(e["attempt"], e["state"], e["outcome"]) for e in attempts] == [
        (1, "pending", "http 500"),
        (2, "dead", "http 500"),
    ]
    for e in attempts:
        assert (e["order_id"], e["event_id"], e["sink"]) == ("O-L", event_id, sinks[0].id)
    dead = [e for e in logs if e["event"] == "delivery.dead"]
    assert len(dead) == 1 and dead[0]["log_level"] == "error"
    text = repr(logs)
    for secret in ("qs-secret", SECRET, SECRET.removeprefix("whsec_"), PAYOUT, url):
        assert secret not in text


async def test_run_sees_wakes_and_inserts_by_another_process(
    tmp_path: Path, store: SqliteStore
) -> None:
    """The run loop delivers an event queued through another store connection with no wake
    (it re-checks the store on its own), and one announced by wake()."""
    receiver = Receiver(SECRET)
    other = await SqliteStore.open(tmp_path / "state")  # as `orderwatch replay` would
    stop = asyncio.Event()
    async with running_receiver(receiver) as url:
        sinks = build_sinks(hook_settings({"url": url}))
        deliverer = Deliverer(store, sinks, owner="t")
        task = asyncio.create_task(deliverer.run(stop))
        try:
            first = await queue_final(other, "O-X1", sinks, time.time())

            async def heard(n: int) -> bool:
                return len(receiver.events) >= n

            await until(lambda: heard(1), receiver.changed, timeout=10)
            second = await queue_final(store, "O-X2", sinks, time.time())
            deliverer.wake()
            await until(lambda: heard(2), receiver.changed, timeout=10)
        finally:
            stop.set()
            await task
            await other.close()
            await close_all(sinks)
    assert [e.event_id for e in receiver.events] == [first, second]


async def test_stop_abandons_a_hanging_attempt_within_the_grace(store: SqliteStore) -> None:
    """On stop, an attempt that never ends is cancelled after the grace; the delivery stays
    pending with no attempt counted, and is due again once the owner's leases are released."""
    hanging = Receiver(SECRET)
    hanging.hang = True
    stop = asyncio.Event()
    async with running_receiver(hanging) as url:
        sinks = build_sinks(hook_settings({"url": url, "timeout": "1h"}))
        await queue_final(store, "O-HS", sinks, time.time())
        deliverer = Deliverer(store, sinks, owner="t")
        task = asyncio.create_task(deliverer.run(stop, shutdown_timeout_s=0.2))

        async def in_flight() -> bool:
            return hanging.in_flight == 1

        await until(in_flight, hanging.changed, timeout=10)
        stop.set()
        await asyncio.wait_for(task, 10)  # would never return if the attempt were awaited
        await close_all(sinks)
    assert await row(store, "O-HS") == ("pending", 0, None)
    assert await store.next_delivery_due_at([sinks[0].id]) > time.time() + 60  # type: ignore[operator]
    await store.release_owner("t", time.time())
    assert await store.next_delivery_due_at([sinks[0].id]) <= time.time()  # type: ignore[operator]


async def test_hanging_endpoint_does_not_slow_a_healthy_one(store: SqliteStore) -> None:
    """The run loop: one endpoint never answers; the healthy endpoint still gets all 20 events,
    while the hanging one has at most its concurrency (2) in flight."""
    healthy, hanging = Receiver(SECRET), Receiver(SECRET)
    hanging.hang = True
    stop = asyncio.Event()
    async with running_receiver(healthy) as good_url, running_receiver(hanging) as bad_url:
        settings = hook_settings(
            {"url": bad_url, "timeout": "1h", "max_concurrency": 2}, {"url": good_url}
        )
        sinks = build_sinks(settings)
        ids = [f"O-I{i:02d}" for i in range(20)]
        for oid in ids:
            await queue_final(store, oid, sinks, time.time())
        task = asyncio.create_task(Deliverer(store, sinks, owner="t").run(stop, 0.1))
        try:

            async def all_heard() -> bool:
                return sorted(e.order_id for e in healthy.events) == ids

            await until(all_heard, healthy.changed, timeout=20)
            assert 1 <= hanging.attempts <= 2 and hanging.in_flight <= 2
        finally:
            stop.set()
            await task
            await close_all(sinks)


@pytest.mark.slow
async def test_hanging_endpoint_does_not_slow_polling_or_a_healthy_one(tmp_path: Path) -> None:
    """The whole daemon: one endpoint never answers; every order still ends final and the
    healthy endpoint gets every event, while the hanging one holds at most its concurrency."""
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

            await until(all_heard, healthy.changed, timeout=20)
            assert (await d.store.counts())["final"] == len(ids)  # type: ignore[union-attr]
            assert 1 <= hanging.attempts <= 2 and hanging.in_flight <= 2


async def test_callback_gets_the_event_dict_and_is_retried_after_raising(
    store: SqliteStore,
) -> None:
    """An in-process callback receives {"id", "type", "timestamp", "data"}; when it raises, it
    is called again on the schedule with the same id, and delivered when it returns."""
    calls: list[dict[str, Any]] = []

    async def on_final(event: dict[str, Any]) -> None:
        calls.append(event)
        if len(calls) == 1:
            raise RuntimeError("downstream unavailable")

    clock = FakeClock()
    sinks = build_sinks(load_settings_from_mapping({}), extra_callbacks=[on_final])
    assert sinks[0].id == f"callback:{__name__}:{on_final.__qualname__}"
    event_id = await queue_final(store, "O-CB", sinks, clock.now)
    deliverer = Deliverer(store, sinks, owner="t", clock=clock)
    await deliverer.run_until_idle()
    assert await row(store, "O-CB") == ("pending", 1, "raised RuntimeError")
    clock.now += sinks[0].retry_schedule_s[0]
    await deliverer.run_until_idle()
    assert await row(store, "O-CB") == ("delivered", 2, "ok")
    assert calls[0] == calls[1]
    assert set(calls[0]) == {"id", "type", "timestamp", "data"}
    assert calls[0]["id"] == event_id and calls[0]["data"]["id"] == "O-CB"


async def test_deliveries_of_a_sink_no_longer_configured_are_reported_at_start(
    tmp_path: Path,
) -> None:
    """A webhook URL fixed in the config is a new sink id: the old one's pending deliveries
    are sent by nobody. The daemon says so at start, with the way out (replay)."""
    async with running_receiver(Receiver(SECRET)) as url:
        old = hook_settings({"url": url + "?typo"})
        store = await SqliteStore.open(tmp_path / "state", daemon=True, now=time.time())
        try:
            await queue_final(store, "O-OLD", build_sinks(old), time.time())
        finally:
            await store.close()
        settings = settings_for(
            tmp_path, "http://127.0.0.1:9/v2", webhooks=[{"url": url, "secret": SECRET}]
        )
        with logged() as (logs, line):
            async with running_daemon(settings):

                async def warned() -> bool:
                    return any(e["event"] == "delivery.stranded" for e in logs)

                await until(warned, line, timeout=5)
    (warning,) = [e for e in logs if e["event"] == "delivery.stranded"]
    assert warning["sinks"] == {build_sinks(old)[0].id: 1}
    assert "replay" in warning["hint"]


async def test_a_callback_that_raises_cancelled_error_is_a_failed_attempt(
    store: SqliteStore,
) -> None:
    """A callback that awaits a task somebody else cancelled raises CancelledError although
    nobody cancels the deliverer: a failed attempt, recorded and retried on the schedule (it
    escaped, recorded nothing, was tried again at each lease's end and never went dead, and
    ended `orderwatch replay` with a traceback)."""

    async def on_final(event: dict[str, Any]) -> None:
        inner = asyncio.ensure_future(asyncio.sleep(10))
        inner.cancel()
        await inner

    sinks = build_sinks(load_settings_from_mapping({}), extra_callbacks=[on_final])
    await queue_final(store, "O-CX", sinks, time.time())
    await Deliverer(store, sinks, owner="t").run_until_idle()
    assert await row(store, "O-CX") == ("pending", 1, "raised CancelledError")


async def test_a_callback_that_exits_is_a_failed_attempt(store: SqliteStore) -> None:
    """A callback that calls sys.exit() (argparse does on bad input) is a failed attempt; it
    went through asyncio as SystemExit and ended the whole daemon, its delivery still
    leased and never counted."""

    async def on_final(event: dict[str, Any]) -> None:
        sys.exit(0)

    sinks = build_sinks(load_settings_from_mapping({}), extra_callbacks=[on_final])
    await queue_final(store, "O-EXIT", sinks, time.time())
    await Deliverer(store, sinks, owner="t").run_until_idle()
    assert await row(store, "O-EXIT") == ("pending", 1, "raised SystemExit")


async def test_a_callback_error_is_redacted_before_any_log_chain(store: SqliteStore) -> None:
    """A callback's error may quote the payout link. An application that embeds orderwatch
    logs through its own processors, which know nothing of our redactor (capture_logs
    stands in for them): the link must not reach them."""
    link = "https://spend.example/redeem/l1nk-s3cret"

    async def on_final(event: dict[str, Any]) -> None:
        raise RuntimeError(f"downstream refused {link}")

    sinks = build_sinks(load_settings_from_mapping({}), extra_callbacks=[on_final])
    await queue_final(store, "O-LINK", sinks, time.time())
    with structlog.testing.capture_logs() as logs:
        await Deliverer(store, sinks, owner="t").run_until_idle()
    (raised,) = [e for e in logs if e["event"] == "callback.raised"]
    assert "l1nk-s3cret" not in repr(raised)
    assert "RuntimeError: downstream refused [REDACTED-URL]" in raised["error"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon_here", "expected 'package.module:function'"),
        ("json:", "expected 'package.module:function'"),
        ("orderwatch_no_such_module:f", "cannot import orderwatch_no_such_module"),
        ("json:no_such_function", "has no no_such_function"),
        ("json:dumps", "must be an async function"),
    ],
)
def test_bad_callback_specs_are_usage_errors(spec: str, message: str) -> None:
    """A malformed, missing or synchronous callback is a UsageError naming the spec."""
    with pytest.raises(UsageError) as info:
        load_callable(spec)
    assert spec in str(info.value) and message in str(info.value)


def test_callbacks_from_config_are_loaded_and_named_by_their_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`callbacks: [pkg.mod:func]` loads the async function, names the sink
    `callback:pkg.mod:func`, and the same sink twice is a UsageError: located by the config
    loader when the config names it twice, from build_sinks when code passes it twice."""
    (tmp_path / "ow_test_hooks.py").write_text("async def on_final(event):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ow_test_hooks", raising=False)
    sinks = build_sinks(load_settings_from_mapping({"callbacks": ["ow_test_hooks:on_final"]}))
    assert [s.id for s in sinks] == ["callback:ow_test_hooks:on_final"]
    assert isinstance(sinks[0], CallbackSink)
    twice = {"callbacks": ["ow_test_hooks:on_final", "ow_test_hooks:on_final"]}
    with pytest.raises(UsageError, match=r"callbacks\[1\]: the same sink as callbacks\[0\]"):
        build_sinks(load_settings_from_mapping(twice))
    on_final = sinks[0].func
    with pytest.raises(UsageError, match="configured twice"):
        build_sinks(load_settings_from_mapping({}), extra_callbacks=[on_final, on_final])


async def test_a_callback_error_never_quotes_the_event_data() -> None:
    """A callback that raises with the event's data in its message (a card code, a PIN: no
    URL, so the redactor let them through) was logged as is, traceback and all. Logged now:
    the exception's type and its message with every string of `data` of 4 characters or more
    replaced, cut to about 200 characters."""
    code, pin = "GIFT-7Q2X-99ZK", "4821"
    data = {
        "id": "O-CARD",
        "status": "COMPLETED",
        "items": [{"redemption": {"code": code, "pin": pin, "kind": "abc"}}],
    }
    event = make_event("O-CARD", "COMPLETED", data, time.time())

    async def on_final(event: dict[str, Any]) -> None:
        item = event["data"]["items"][0]["redemption"]
        try:
            raise KeyError(item["code"])
        except KeyError as e:
            raise ValueError(
                f"card {item['code']} with pin {item['pin']} ({item['kind']}) refused; " * 20
            ) from e

    sink = CallbackSink(on_final)
    with structlog.testing.capture_logs() as logs:
        result = await sink.attempt(event)
    assert (result.delivered, result.outcome) == (False, "raised ValueError")
    (raised,) = [e for e in logs if e["event"] == "callback.raised"]
    assert raised["error_type"] == "ValueError"
    assert raised["where"].startswith(f"{__file__}:") and raised["where"].endswith(" on_final")
    message = raised["error"]
    assert message.startswith("ValueError: card [REDACTED] with pin [REDACTED] (abc) refused;")
    assert len(message) <= 201
    logged = repr(raised)
    assert code not in logged and pin not in logged and "7Q2X" not in logged
