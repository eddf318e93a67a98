"""The example webhook receivers in examples/, each run as a real child process behind a real
`orderwatch run` daemon and the bundled simulator: retried, replayed and restarted deliveries
of one event are handled once, forged ones never, and payout links stay out of their logs."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks import Webhook

from orderwatch.delivery.events import event_id
from orderwatch.devtools.simulator import SimOptions, running_simulator

from harness import API_KEY, REPO, SECRET, child_env, free_port, spawn, until, write_config

EXAMPLES = REPO / "examples"
PATH = "/webhooks/orderwatch"
OTHER_SECRET = "whsec_dGhpcyBpcyBub3QgdGhlIHJpZ2h0IGtleQ=="


def receiver_argv(kind: str, port: int) -> list[str]:
    """The one command each example's docstring gives, with a chosen port."""
    app = {
        "aiohttp": [str(EXAMPLES / "receiver_aiohttp.py")],
        "fastapi": ["-m", "uvicorn", "--app-dir", str(EXAMPLES), "receiver_fastapi:app"],
        "flask": ["-m", "flask", "--app", str(EXAMPLES / "receiver_flask.py"), "run"],
    }[kind]
    return [sys.executable, *app, "--port", str(port)]


class ReceiverProcess:
    """One example receiver as a child process on a free port; its output goes to a file."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind, self.tmp = kind, tmp
        self.env = {
            "RECEIVER_WEBHOOK_SECRET": SECRET,
            "RECEIVER_DB": str(tmp / "inbox.sqlite3"),
            "RECEIVER_HANDLED_LOG": str(tmp / "handled.log"),
        }
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.logs: list[Path] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    async def start(self) -> None:
        self.port = free_port()
        log = self.tmp / f"receiver-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *receiver_argv(self.kind, self.port),
                env={**child_env(), **self.env},
                cwd=self.tmp,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )

        async def listening() -> bool:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise AssertionError(f"receiver exited: {log.read_text()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            writer.close()
            await writer.wait_closed()
            return True

        await until(listening, timeout=30)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.proc.wait(), 15)

    def output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs)


class LossyProxy:
    """Relays deliveries to the receiver. The first attempt of each webhook-id reaches it, but
    the daemon is told 503 (an answer lost on the way back), so the retry is a duplicate."""

    def __init__(self, target: Callable[[], str]) -> None:
        self.target = target
        self.answers: dict[str, list[int]] = {}  # webhook-id -> what the receiver answered
        self.changed = asyncio.Condition()
        self.session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.Response:
        assert self.session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower().startswith("webhook-")}
        headers["Content-Type"] = request.headers.get("Content-Type", "application/json")
        try:
            async with self.session.post(self.target(), data=body, headers=headers) as r:
                status = r.status
        except aiohttp.ClientError:
            status = 502
        webhook_id = request.headers.get("webhook-id", "")
        async with self.changed:
            first = webhook_id not in self.answers
            self.answers.setdefault(webhook_id, []).append(status)
            self.changed.notify_all()
        return web.Response(status=503 if first else status)

    def reached(self, webhook_id: str) -> int:
        """How many deliveries of this id the receiver answered with a 2xx."""
        return sum(200 <= s < 300 for s in self.answers.get(webhook_id, []))

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 30) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), timeout)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        app = web.Application()
        app.router.add_post(PATH, self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        async with aiohttp.ClientSession() as self.session:
            try:
                yield f"http://127.0.0.1:{runner.addresses[0][1]}{PATH}"
            finally:
                await runner.cleanup()


def handled_lines(tmp: Path) -> list[str]:
    path = tmp / "handled.log"
    return path.read_text().splitlines() if path.exists() else []


async def post_event(
    url: str, webhook_id: str, body: bytes, *, secret: str = SECRET, **override: str
) -> int:
    """POST an event signed as orderwatch signs it; `override` replaces headers."""
    now = datetime.now(UTC)
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, now, body.decode()),
        "content-type": "application/json",
    }
    headers.update({k.replace("_", "-"): v for k, v in override.items()})
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
        return r.status


def event_body(event_type: str, order_id: str) -> bytes:
    data: dict[str, Any] = {"id": order_id, "status": "COMPLETED", "items": []}
    stamp = datetime.now(UTC).isoformat()
    return json.dumps({"type": event_type, "timestamp": stamp, "data": data}).encode()


async def forged_requests_get_4xx(url: str) -> list[int]:
    """A wrong secret, a malformed signature, a stale timestamp, no signature: each answered."""
    body = event_body("order.completed", "O-FORGED")
    stale = int(time.time()) - 600
    stale_sig = Webhook(SECRET).sign(
        "evt_completed_O-FORGED", datetime.fromtimestamp(stale, UTC), body.decode()
    )
    wid = "evt_completed_O-FORGED"
    return [
        await post_event(url, wid, body, secret=OTHER_SECRET),
        await post_event(url, wid, body, webhook_signature="v1,not*base64!"),
        await post_event(url, wid, body, webhook_signature="v2"),
        await post_event(url, wid, body, webhook_timestamp=str(stale), webhook_signature=stale_sig),
        await post_event(url, wid, body, webhook_signature=""),
    ]


EXPECTED = {
    "O-EX-DONE1": "order.completed",
    "O-EX-DONE2": "order.completed",
    "O-EX-FAIL": "order.failed",
    "O-EX-SLOW": "order.expired",
    "O-404-EX": "order.not_found",
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["aiohttp", "fastapi", "flask"])
async def test_receiver_handles_each_event_once_through_retries_replays_and_restarts(
    kind: str, tmp_path: Path
) -> None:
    """Every final event is handled exactly once although it reaches the example receiver
    three times (a retry after a lost answer, a replay after a receiver restart); forged
    requests get 4xx and are never handled; no payout link appears in its output."""
    receiver = ReceiverProcess(kind, tmp_path)
    proxy = LossyProxy(lambda: receiver.url)
    ids = list(EXPECTED)
    wids = {oid: event_id(oid, t) for oid, t in EXPECTED.items()}
    opts = SimOptions(api_key=API_KEY, complete_after=0)
    async with running_simulator(opts) as rs, proxy.running() as proxy_url:
        rs.sim.create(["O-EX-FAIL"], complete_after=0, status="FAILED")
        rs.sim.create(["O-EX-SLOW"], complete_after=3600)  # never final: expires
        await receiver.start()
        assert all(400 <= s < 500 for s in await forged_requests_get_4xx(receiver.url))

        cfg = write_config(
            tmp_path,
            rs.base_url,
            # Long enough for a loaded machine to start the daemon and poll O-404-EX twice
            # (not_found), short enough that O-EX-SLOW expires soon.
            polling={"give_up_after": "8s", "not_found_grace": "300ms"},
            webhooks=[{"url": proxy_url, "secret": SECRET, "retry_schedule": ["100ms"] * 6}],
        )
        with (tmp_path / "daemon.log").open("wb") as daemon_log:
            daemon = await spawn("run", "-c", str(cfg), stderr=daemon_log)
        try:
            add = await spawn("add", "-c", str(cfg), *ids, stdout=asyncio.subprocess.DEVNULL)
            assert await add.wait() == 0
            # Each event: first attempt answered 503 by the proxy, then retried.
            await proxy.wait_until(lambda: all(proxy.reached(w) >= 2 for w in wids.values()))

            async def all_handled() -> bool:
                return len(handled_lines(tmp_path)) >= len(ids)

            await until(all_handled, timeout=30)

            await receiver.stop()
            await receiver.start()  # a new process on the same inbox file, a new port
            replay = await spawn("replay", "-c", str(cfg), *ids, stdout=asyncio.subprocess.PIPE)
            out, _ = await replay.communicate()
            assert replay.returncode == 0 and b"queued" in out  # the running daemon sends them
            await proxy.wait_until(lambda: all(proxy.reached(w) >= 3 for w in wids.values()))

            # One event after the duplicates: the inbox is handled in arrival order, so once
            # its line is there any duplicate wrongly let in would have been handled too.
            last = event_id("O-EX-LAST", "order.completed")
            body = event_body("order.completed", "O-EX-LAST")
            assert await post_event(receiver.url, last, body) == 204

            async def last_handled() -> bool:
                return any(line.startswith(last) for line in handled_lines(tmp_path))

            await until(last_handled, timeout=30)
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(daemon.wait(), 15) == 0
            await receiver.stop()
        payout_urls = [
            item["payout"]["url"]
            for oid in ids
            for item in (rs.sim.payload(oid) or {}).get("items", [])
        ]

    expected = [f"{wids[oid]} {t} {oid}" for oid, t in EXPECTED.items()]
    assert sorted(handled_lines(tmp_path)) == sorted(
        [*expected, f"{last} order.completed O-EX-LAST"]
    )
    assert not any("O-FORGED" in line for line in handled_lines(tmp_path))
    output = receiver.output()
    assert payout_urls and not any(url in output for url in payout_urls)
    assert all(oid in output for oid in ids)  # it does log the order ids
