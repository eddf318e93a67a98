"""Runa's own push (Svix `order.completion`): verified before anything else, committed before
its 2xx, deduplicated by svix-id, ahead of the backlog, never faster than the rate limit, and
never deciding an order by itself (the GET does)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from standardwebhooks.webhooks import Webhook

from orderwatch.cli.status_view import gather_status, render_status
from orderwatch.config.load import load_settings_from_mapping
from orderwatch.config.secrets import register_secrets
from orderwatch.core.errors import UsageError
from orderwatch.core.redact import REDACTOR
from orderwatch.devtools.pusher import completion_body
from orderwatch.devtools.sim_cli import add_arguments, options_from_args
from orderwatch.devtools.simulator import RunningSim, SimOptions, running_simulator
from orderwatch.ops.daemon import Daemon
from orderwatch.ops.metrics import Metrics
from orderwatch.polling.expedite import Expedited
from orderwatch.polling.held import HeldClaims
from orderwatch.polling.policy import Reschedule
from orderwatch.polling.prefetch import Prefetch
from orderwatch.store.base import EXPEDITED_AT, Claim
from orderwatch.store.sqlite import SqliteStore

from harness import (
    API_KEY,
    SECRET,
    config_dict,
    free_port,
    running_daemon,
    spawn,
    states,
    until,
    write_config,
)

OLD = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
NOT_PUSHED = {"initial_delay": "1h", "max_interval": "1h"}  # polling alone finds nothing here


def signed(body: bytes, msg_id: str = "msg_1", secret: str = SECRET, at: datetime | None = None):  # type: ignore[no-untyped-def]
    """Svix's headers, signed by the Standard Webhooks reference library."""
    at = at or datetime.now(UTC)
    return {
        "svix-id": msg_id,
        "svix-timestamp": str(int(at.timestamp())),
        "svix-signature": Webhook(secret).sign(msg_id, at, body),
    }


async def post(
    url: str, body: Any, headers: dict[str, str], method: str = "POST"
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, url, data=body, headers=headers) as r,
    ):
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


def pushes_metric(d: Daemon, outcome: str) -> float:
    return d.metrics.push.pushes.labels(outcome=outcome)._value.get()  # type: ignore[no-any-return]


@asynccontextmanager
async def pushing(
    tmp: Path, rs: RunningSim, push: dict[str, Any] | None = None, **sections: Any
) -> AsyncIterator[tuple[Daemon, str]]:
    """A daemon whose polling alone would find nothing for an hour, with push on."""
    cfg = config_dict(tmp, rs.base_url, polling=NOT_PUSHED, **sections)
    cfg["push"] = {"listen": "127.0.0.1:0", "secret": SECRET, **(push or {})}
    async with running_daemon(load_settings_from_mapping(cfg)) as d:
        assert d.push is not None
        yield d, f"http://127.0.0.1:{d.push.port}/runa/webhook"


async def final(d: Daemon, *ids: str) -> None:
    async def all_final() -> bool:
        return set((await states(d, list(ids))).values()) == {"final"}

    await until(all_final)


def sim() -> Any:
    return running_simulator(SimOptions(api_key=API_KEY, complete_after=3600))


async def test_reference_signatures_are_accepted_with_rotation(tmp_path: Path) -> None:
    """Signed with the new secret, with the old one kept in `secrets`, or with both signatures
    in one header (the first not matching): each is accepted and its order ends final."""
    async with sim() as rs, pushing(tmp_path, rs, {"secrets": [OLD]}) as (d, url):
        rs.sim.complete(["O-NEW", "O-OLD", "O-BOTH"])
        for order_id, secret in (("O-NEW", SECRET), ("O-OLD", OLD)):
            body = completion_body(order_id, "COMPLETED")
            assert await post(url, body, signed(body, f"msg_{order_id}", secret)) == (
                200,
                {"outcome": "added"},
            )
        body = json.dumps({"id": "O-BOTH", "status": "FAILED"}).encode()
        headers = signed(body, "msg_both")
        headers["svix-signature"] = "v1,bm90IGl0 " + headers["svix-signature"]
        assert (await post(url, body, headers))[0] == 200
        await final(d, "O-NEW", "O-OLD", "O-BOTH")
        assert pushes_metric(d, "accepted") == 3


async def test_unverified_requests_get_401_and_change_nothing(tmp_path: Path) -> None:
    """A tampered body, a wrong secret, a stale or future timestamp, a missing header or a
    timestamp that is no number: 401, and not a row, a push id or a GET comes of it."""
    body = completion_body("O-X", "COMPLETED")
    now = datetime.now(UTC)
    cases = [
        (body.replace(b"O-X", b"O-Y"), signed(body)),
        (body, signed(body, secret=OLD)),
        (body, signed(body, at=now - timedelta(minutes=6))),
        (body, signed(body, at=now + timedelta(minutes=6))),
        *((body, {k: v for k, v in signed(body).items() if k != drop}) for drop in signed(body)),
        (body, {**signed(body), "svix-timestamp": "soon"}),
    ]
    async with sim() as rs, pushing(tmp_path, rs) as (d, url):
        for sent, headers in cases:
            status, answer = await post(url, sent, headers)
            assert status == 401, answer
        assert d.store is not None
        assert (await d.store.counts())["pending"] == 0
        assert await d.store.pushes_for(["O-X", "O-Y"]) == {}
        assert pushes_metric(d, "bad_signature") == len(cases) == 8
    assert rs.sim.received == 0


async def test_a_replayed_svix_id_is_a_duplicate_and_changes_nothing(tmp_path: Path) -> None:
    """The same message again (as sent, or re-signed later as Svix retries): 2xx duplicate,
    one push kept, no further GET; a new message id is a new push."""
    async with sim() as rs, pushing(tmp_path, rs) as (d, url):
        rs.sim.complete(["O-DUP", "O-NEXT"])
        body = completion_body("O-DUP", "COMPLETED")
        first = signed(body, "msg_dup")
        assert await post(url, body, first) == (200, {"outcome": "added"})
        await final(d, "O-DUP")
        assert await post(url, body, first) == (200, {"outcome": "duplicate"})
        later = signed(body, "msg_dup", at=datetime.now(UTC) + timedelta(seconds=3))
        assert await post(url, body, later) == (200, {"outcome": "duplicate"})
        nxt = completion_body("O-NEXT", "COMPLETED")
        assert (await post(url, nxt, signed(nxt, "msg_next")))[1] == {"outcome": "added"}
        await final(d, "O-NEXT")  # any GET the duplicates caused would have come before
        assert d.store is not None
        assert (await d.store.pushes_for(["O-DUP"]))["O-DUP"].count == 1
        assert [oid for _, oid in rs.sim.requests].count("O-DUP") == 1
        assert pushes_metric(d, "duplicate") == 2


async def test_bodies_that_are_too_big_or_no_event(tmp_path: Path) -> None:
    """Over 64 KiB: 413 (with or without a Content-Length). Verified but not JSON, not an
    object, or an order completion without a valid order ID or a status: 400. Nothing kept."""
    big = b'{"id": "O-BIG", "status": "COMPLETED", "pad": "' + b"x" * 70_000 + b'"}'

    async def chunks() -> AsyncIterator[bytes]:
        yield big

    bad = [b"not json", b"[1, 2]", b'{"id": "../etc/passwd", "status": "COMPLETED"}']
    bad += [
        b'{"id": "O-NOSTATUS"}',
        b'{"id": 7, "status": "COMPLETED"}',
        b'{"id": "O-X", "status": "OK"}',
    ]
    async with sim() as rs, pushing(tmp_path, rs) as (d, url):
        assert (await post(url, big, signed(big)))[0] == 413
        assert (await post(url, chunks(), signed(big)))[0] == 413
        for i, body in enumerate(bad[:-1]):
            status, answer = await post(url, body, signed(body, f"msg_{i}"))
            assert status == 400, (body, answer)
        assert pushes_metric(d, "rejected") == 2 + len(bad) - 1
        assert d.store is not None and (await d.store.counts())["pending"] == 0
        # Any status string is an order completion: the GET, not the push, says what it is.
        assert (await post(url, bad[-1], signed(bad[-1], "msg_ok")))[0] == 200


async def test_other_events_are_acknowledged_and_ignored(tmp_path: Path) -> None:
    """A product.update (as the OpenAPI has it), an envelope of another type and an object
    of no known shape: 2xx, counted as ignored, no order tracked."""
    product = {
        "product_code": "XYZ-US",
        "old_state": {"price_multiplier": "1.00", "is_orderable": True},
        "new_state": {"price_multiplier": "0.95", "is_orderable": False},
        "timestamp": "2024-02-05T10:00:00Z",
    }
    bodies = [product, {"type": "product.update", "data": product}, {"hello": "there"}]
    async with sim() as rs, pushing(tmp_path, rs) as (d, url):
        for i, event in enumerate(bodies):
            body = json.dumps(event).encode()
            status, answer = await post(url, body, signed(body, f"msg_{i}"))
            assert status == 200 and "event_type" in answer
        assert pushes_metric(d, "ignored") == 3
        assert d.store is not None and (await d.store.counts())["pending"] == 0


async def test_unknown_orders_tracked_only_with_track_unknown(tmp_path: Path) -> None:
    """track_unknown on: a push for an order never added starts tracking it, and status and
    GET /orders/{id} say when a push came; off: 2xx, ignored, nothing tracked."""
    async with sim() as rs:
        rs.sim.complete(["O-UNKNOWN"])
        body = completion_body("O-UNKNOWN", "COMPLETED")
        async with pushing(tmp_path / "off", rs, {"track_unknown": False}) as (d, url):
            assert await post(url, body, signed(body)) == (200, {"outcome": "untracked"})
            assert await states(d, ["O-UNKNOWN"]) == {}
            assert pushes_metric(d, "ignored") == 1
        async with pushing(tmp_path / "on", rs) as (d, url):
            assert await post(url, body, signed(body)) == (200, {"outcome": "added"})
            await final(d, "O-UNKNOWN")
            report = await d.order_report("O-UNKNOWN")
            assert report is not None and report["push"]["count"] == 1
            settings = d.settings
        status = await gather_status(settings, ["O-UNKNOWN"])
        assert status["orders"][0]["push"]["count"] == 1
        assert "O-UNKNOWN <- push: 1 received" in render_status(status, time.time())


async def test_wrong_path_or_method_and_metrics_from_the_start(tmp_path: Path) -> None:
    """Another path is a 404 and another method a 405; every outcome of
    orderwatch_pushes_total is exported before the first push, push on or off."""
    text = Metrics().render().decode()
    for outcome in ("accepted", "duplicate", "bad_signature", "ignored", "rejected"):
        assert f'orderwatch_pushes_total{{outcome="{outcome}"}} 0.0' in text
    body = completion_body("O-X", "COMPLETED")
    async with sim() as rs, pushing(tmp_path, rs) as (_, url):
        assert (await post(url.replace("/runa/webhook", "/other"), body, signed(body)))[0] == 404
        assert (await post(url, None, {}, method="GET"))[0] == 405


async def test_a_reload_applies_new_secrets_at_once(tmp_path: Path) -> None:
    """Rotation by reload: after it, the new secret verifies and a dropped one does not."""
    async with sim() as rs:
        cfg = config_dict(tmp_path, rs.base_url, polling=NOT_PUSHED)
        cfg["push"] = {"listen": "127.0.0.1:0", "secret": OLD}
        old = load_settings_from_mapping(cfg)
        new = load_settings_from_mapping({**cfg, "push": {**cfg["push"], "secret": SECRET}})
        async with running_daemon(old, reload=lambda: new) as d:
            assert d.push is not None
            url = f"http://127.0.0.1:{d.push.port}/runa/webhook"
            body = completion_body("O-R", "COMPLETED")
            assert (await post(url, body, signed(body, "msg_a", SECRET)))[0] == 401
            assert d.reload()
            assert (await post(url, body, signed(body, "msg_b", SECRET)))[0] == 200
            assert (await post(url, body, signed(body, "msg_c", OLD)))[0] == 401


async def test_a_push_for_a_leased_order_is_followed_up(tmp_path: Path) -> None:
    """A push for an order another replica holds (its GET may have left before the order
    completed): once the holder puts it back at its normal cadence, the order is polled at
    once, not an hour later."""
    async with sim() as rs, pushing(tmp_path, rs) as (d, url):
        store = d.store
        assert store is not None
        await d.add_orders(["O-HELD"])  # due in an hour
        (claim,) = await store.claim_due(time.time() + 7200, 1, "other-replica", 60)
        rs.sim.complete(["O-HELD"])
        body = completion_body("O-HELD", "COMPLETED")
        assert await post(url, body, signed(body)) == (200, {"outcome": "leased"})
        # The holder's GET said PROCESSING: back at its cadence, due in an hour.
        assert await store.reschedule(
            claim,
            time.time() + 3600,
            polls=1,
            error_streak=0,
            first_404_at=None,
            last_error=None,
            last_body=None,
        )
        await final(d, "O-HELD")
        assert rs.sim.received == 1


async def test_push_secrets_are_kept_out_of_logs(tmp_path: Path) -> None:
    """Both forms of every push secret (with and without whsec_) are redacted."""
    cfg = config_dict(tmp_path, "http://127.0.0.1:1/v2")
    cfg["push"] = {"listen": "127.0.0.1:0", "secret": SECRET, "secrets": [OLD]}
    register_secrets(load_settings_from_mapping(cfg))
    for secret in (SECRET, OLD, OLD.removeprefix("whsec_")):
        assert secret not in REDACTOR.text(f"a line with {secret} in it")


async def test_the_get_decides_not_the_push(tmp_path: Path) -> None:
    """A push saying COMPLETED for an order the API still says PROCESSING costs one GET at
    once and changes nothing else: the order stays pending, at its normal cadence."""
    async with sim() as rs, pushing(tmp_path, rs) as (d, url):
        await d.add_orders(["O-SLOW"])
        body = completion_body("O-SLOW", "COMPLETED")
        assert await post(url, body, signed(body)) == (200, {"outcome": "expedited"})

        async def polled() -> bool:
            rows = await d.store.get_orders(["O-SLOW"])  # type: ignore[union-attr]
            return rows[0].polls == 1

        await until(polled)
        (row,) = await d.store.get_orders(["O-SLOW"])  # type: ignore[union-attr]
        assert row.state == "pending" and row.next_poll_at is not None
        assert row.next_poll_at > time.time() + 1800  # initial_delay 1h, jitter 10%
        assert rs.sim.received == 1


async def test_a_push_goes_ahead_of_a_saturated_backlog(tmp_path: Path) -> None:
    """300 orders always due keep the limiter busy; a pushed order's GET is among the next
    few the API sees (the workers' sends already under way), not behind the prefetch queue."""
    async with sim() as rs:
        cfg = config_dict(
            tmp_path,
            rs.base_url,
            rate_limit={"requests_per_second": 20, "max_concurrency": 2},
            polling={"initial_delay": "0s", "max_interval": "10ms", "jitter": 0},
        )
        cfg["push"] = {"listen": "127.0.0.1:0", "secret": SECRET}
        async with running_daemon(load_settings_from_mapping(cfg)) as d:
            assert d.push is not None
            url = f"http://127.0.0.1:{d.push.port}/runa/webhook"
            await d.add_orders([f"O-BACKLOG{i:03d}" for i in range(300)])

            async def busy() -> bool:
                return bool(rs.sim.received >= 60)  # past the start, well into the backlog

            await until(busy)
            for n, order_id in enumerate(("O-BACKLOG150", "O-PUSHED")):
                rs.sim.complete([order_id])
                seen = rs.sim.received
                body = completion_body(order_id, "COMPLETED")
                assert (await post(url, body, signed(body, f"msg_{n}")))[0] == 200
                await final(d, order_id)
                ids = [oid for _, oid in list(rs.sim.requests)[seen:]]
                assert order_id in ids[:4], ids[:20]  # the prefetch queue holds 16


async def test_expedited_claims_go_to_the_front_in_arrival_order(
    sqlite_store: SqliteStore,
) -> None:
    """Held and queued claims of pushed orders move to the front, behind earlier pushed ones,
    due at EXPEDITED_AT (so a give-back keeps them first); the store's count is remembered."""
    ready: Prefetch[tuple[Claim, Reschedule | None]] = Prefetch(4)
    held = HeldClaims(sqlite_store, 60.0, 2.0)
    held.enabled = True
    woken: list[int] = []
    exp = Expedited(held, ready, lambda: woken.append(1), cap=4)
    now = time.time()

    def claim(order_id: str, due: float) -> Claim:
        return Claim(order_id, 1, due, now, 0, 0, None, now + 60)

    for order_id in ("Q1", "Q2", "Q3"):
        ready.put((claim(order_id, now), None))
    assert held.hold(claim("H", now), Reschedule(now + 5, 1, 0, None, None, None))
    assert exp.bring_forward(0, ["Q3"]) == {"Q3"}
    assert exp.bring_forward(2, ["H", "GONE"]) == {"H"}
    assert [c.order_id for c, _ in ready] == ["Q3", "H", "Q1", "Q2"]
    front = [ready[0], ready[1]]
    assert all(c.due_at == EXPEDITED_AT for c, _ in front)
    assert front[1][1] is not None and front[1][1].next_poll_at == EXPEDITED_AT
    assert not held and exp.wanted == 2 and len(woken) == 2


@asynccontextmanager
async def simulator_child(*args: str) -> AsyncIterator[str]:
    """`orderwatch simulate` as a child process (its clock apart from this busy loop: the
    arrival times it records are the server's); yields its root URL."""
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    child = await spawn("simulate", "--port", str(port), "--api-key", API_KEY, *args)
    try:

        async def up() -> bool:
            try:
                return (await post(f"{root}/_sim/stats", None, {}, method="GET"))[0] == 200
            except aiohttp.ClientError:
                return False

        await until(up)
        yield root
    finally:
        child.terminate()
        await child.wait()


@pytest.mark.slow
@pytest.mark.serial
async def test_a_thousand_pushes_in_a_second_keep_the_rate(tmp_path: Path) -> None:
    """1,000 pushes for new orders within about a second: every one committed and answered
    2xx, every order ends final, and the API (a simulator in its own process) never sees
    more than the rate in any second."""
    rate = 50
    ids = [f"O-BURST{i:04d}" for i in range(1000)]
    async with simulator_child("--complete-after", "1h") as root:
        assert (await post(f"{root}/_sim/complete", json.dumps({"ids": ids}), {}))[0] == 200
        cfg = config_dict(tmp_path, f"{root}/v2", rate_limit={"requests_per_second": rate})
        cfg["push"] = {"listen": "127.0.0.1:0", "secret": SECRET}
        async with running_daemon(load_settings_from_mapping(cfg)) as d:
            assert d.push is not None
            url = f"http://127.0.0.1:{d.push.port}/runa/webhook"
            signed_all = [
                (b, signed(b, f"msg_{i}"))
                for i, b in ((i, completion_body(i, "COMPLETED")) for i in ids)
            ]
            conn = aiohttp.TCPConnector(limit=100)
            async with aiohttp.ClientSession(connector=conn) as s:

                async def one(body: bytes, headers: dict[str, str]) -> int:
                    async with s.post(url, data=body, headers=headers) as r:
                        return r.status

                statuses = await asyncio.gather(*(one(b, h) for b, h in signed_all))
            assert statuses == [200] * len(ids)
            assert pushes_metric(d, "accepted") == len(ids)

            async def all_final() -> bool:
                return (await d.store.counts())["final"] == len(ids)  # type: ignore[union-attr]

            await until(all_final, timeout=90)
        stats = (await post(f"{root}/_sim/stats", None, {}, method="GET"))[1]
    assert stats["count"] == len(ids)  # one GET each: the pushes only reordered the queue
    assert stats["max_in_window"] <= rate


@pytest.mark.slow
async def test_sigkill_right_after_the_2xx_loses_nothing(tmp_path: Path) -> None:
    """A real daemon killed (-9) the moment it answered a push for an order it never heard of:
    restarted, the order is tracked, polled at once (not at the hour-long cadence) and
    final; Svix's retry of the same message is then a duplicate."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/runa/webhook"
    async with sim() as rs:
        rs.sim.complete(["O-KILLED"])
        cfg = write_config(tmp_path, rs.base_url, polling=NOT_PUSHED)
        text = cfg.read_text() + f"push:\n  listen: 127.0.0.1:{port}\n  secret: {SECRET}\n"
        cfg.write_text(text)
        body = completion_body("O-KILLED", "COMPLETED")
        child = await spawn("run", "-c", str(cfg), stderr=asyncio.subprocess.DEVNULL)

        async def listening() -> bool:
            try:
                return (await post(url, b"", {}))[0] == 401
            except aiohttp.ClientError:
                return False

        await until(listening)
        assert await post(url, body, signed(body, "msg_kill")) == (200, {"outcome": "added"})
        child.send_signal(signal.SIGKILL)
        await child.wait()
        store = await SqliteStore.open(tmp_path / "state")
        try:
            (row,) = await store.get_orders(["O-KILLED"])
            # Final already, expedited, or claimed for its GET (a lease a restart frees): in
            # no case at the hour-long cadence.
            assert row.state == "final" or row.next_poll_at < row.added_at + 120  # type: ignore[operator]
            child = await spawn("run", "-c", str(cfg), stderr=asyncio.subprocess.DEVNULL)

            async def done() -> bool:
                return (await store.get_orders(["O-KILLED"]))[0].state == "final"

            await until(done)
            await until(listening)
            assert await post(url, body, signed(body, "msg_kill")) == (
                200,
                {"outcome": "duplicate"},
            )
            child.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(child.wait(), 15) == 0
        finally:
            await store.close()


@pytest.mark.postgres
async def test_any_replica_may_receive_a_push(tmp_path: Path, pg_dsn: str) -> None:
    """Two replicas on one PostgreSQL store: a push to either finishes an order the other
    added; the same message delivered to both at once is accepted once, a duplicate once."""
    async with sim() as rs:
        ready = []
        for name in ("a", "b"):
            cfg = config_dict(tmp_path / name, rs.base_url, polling=NOT_PUSHED, state_dsn=pg_dsn)
            cfg["push"] = {"listen": "127.0.0.1:0", "secret": SECRET}
            ready.append(load_settings_from_mapping(cfg))
        async with running_daemon(ready[0]) as a, running_daemon(ready[1]) as b:
            assert a.push is not None and b.push is not None
            urls = [f"http://127.0.0.1:{x.push.port}/runa/webhook" for x in (a, b)]  # type: ignore[union-attr]
            await b.add_orders(["O-REPLICA"])
            rs.sim.complete(["O-REPLICA", "O-TWICE"])
            body = completion_body("O-REPLICA", "COMPLETED")
            assert await post(urls[0], body, signed(body)) == (200, {"outcome": "expedited"})
            await final(b, "O-REPLICA")
            twice = completion_body("O-TWICE", "COMPLETED")
            headers = signed(twice, "msg_twice")
            answers = await asyncio.gather(*(post(u, twice, headers) for u in urls))
            outcomes = sorted(a[1]["outcome"] for a in answers)
            assert outcomes == ["added", "duplicate"]
            await final(a, "O-TWICE")


async def test_the_simulator_pushes_as_runa_does(tmp_path: Path) -> None:
    """`orderwatch simulate --push-*`: each order's completion is pushed, signed, after the
    delay; with --push-duplicates 1 each is sent twice with one svix-id (the daemon keeps
    one); the flags need a secret and a sane delay."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/runa/webhook"
    p = argparse.ArgumentParser()
    add_arguments(p)
    flags = ["--push-url", url, "--push-secret", SECRET, "--push-delay", "0s..200ms"]
    options = options_from_args(p.parse_args([*flags, "--push-duplicates", "1"]))
    options.api_key = API_KEY
    with pytest.raises(UsageError):
        options_from_args(p.parse_args(["--push-url", url]))
    with pytest.raises(UsageError):
        options_from_args(p.parse_args([*flags[:4], "--push-delay", "2s..1s"]))
    async with running_simulator(options) as rs:
        cfg = config_dict(tmp_path, rs.base_url, polling=NOT_PUSHED)
        cfg["push"] = {"listen": f"127.0.0.1:{port}", "secret": SECRET}
        async with running_daemon(load_settings_from_mapping(cfg)) as d:
            ids = ["O-SIM1", "O-SIM2", "O-SIM3"]
            rs.sim.create(ids, complete_after=0.3)
            await final(d, *ids)

            async def both_copies() -> bool:
                return pushes_metric(d, "duplicate") == len(ids)

            await until(both_copies)
            assert pushes_metric(d, "accepted") == len(ids)
            assert rs.sim.received == len(ids)  # polling alone would wait an hour


async def test_check_config_wants_a_secret_with_listen(tmp_path: Path) -> None:
    """`push.listen` without a secret is a located error (exit 2); off loopback with a
    secret (from a file) is fine; a secret that is not whsec_ + base64 is located too."""
    base = "runa: {api_key: xx.0123456789abcdef}\nstate_dir: ./state\npush:\n"
    (tmp_path / "secret").write_text(SECRET + "\n")
    cases = [
        ("  listen: 0.0.0.0:9465\n", 2, "ow.yaml:3: push: listen is 0.0.0.0:9465: give secret"),
        ("  listen: 0.0.0.0:9465\n  secret_file: secret\n", 0, "ok"),
        ("  listen: '[::1]:9465'\n  secret: whsec_%%%\n", 2, "ow.yaml:5: push.secret: is not a"),
    ]
    for text, code, expected in cases:
        cfg = tmp_path / "ow.yaml"
        cfg.write_text(base + text)
        proc = await spawn(
            "check-config",
            "-c",
            str(cfg),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == code, err
        assert expected in (out + err).decode()
        assert "%%%" not in err.decode()
