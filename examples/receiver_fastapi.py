"""A receiver for orderwatch's webhooks, on FastAPI: verify, record, answer 2xx, then work.

Run it (Python 3.11+, `pip install fastapi uvicorn standardwebhooks`), from this folder:

    RECEIVER_WEBHOOK_SECRET=whsec_... uvicorn receiver_fastapi:app --port 8000

and give orderwatch the same secret and the URL http://HOST:8000/webhooks/orderwatch:

    webhooks:
      - url: http://127.0.0.1:8000/webhooks/orderwatch
        secret: whsec_...

Environment (not ORDERWATCH_*: orderwatch reads those as overrides of its own config):
    RECEIVER_WEBHOOK_SECRET  the webhook's `whsec_...` secret, as in orderwatch's config (required)
    RECEIVER_DB              the SQLite inbox (default receiver.sqlite3; created mode 0600)
    RECEIVER_HANDLED_LOG     where the placeholder work appends `<webhook-id> <type> <order id>`
                             (default handled.log)

Each delivery: the raw body is verified (signature, timestamp within 5 minutes), else 401.
The event goes into the inbox under its `webhook-id` (INSERT OR IGNORE on the primary key,
committed before the answer), so a retry or a replay (`orderwatch replay`) of an id already
there changes nothing. Then 204 goes back at once, and one worker task handles the inbox in
arrival order after the answer. Nothing is lost in a crash: events still in the inbox are
handled at the next start. An event whose work was cut short by a crash is handled again
then, so keep the work idempotent (key it by order id).

Replace `do_work` with the real work. Run one process per inbox file (one uvicorn worker).
Logs show the event type, webhook-id and order id only: `data` holds payout links.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, Response
from standardwebhooks import Webhook, WebhookVerificationError

PATH = "/webhooks/orderwatch"
EVENT_TYPES = {"order.completed", "order.failed", "order.expired", "order.not_found"}
RETRY_AFTER_FAILURE_S = 10.0  # the failed event stays first in line and is tried again

log = logging.getLogger("uvicorn.error").getChild("receiver")  # shown by uvicorn's logging


async def do_work(webhook_id: str, event_type: str, order_id: str, data: dict[str, Any]) -> None:
    """The real work goes here. Runs after the 2xx, once per webhook-id (again only if a crash
    cut it short). `data` is the order as Runa's API returned it; for expired and not_found,
    `{"id", "status", "last_response"}`."""
    match event_type:
        case "order.completed":
            pass  # e.g. send each data["items"][i]["payout"]["url"] to its customer
        case "order.failed":
            pass  # e.g. refund or re-order
        case "order.expired" | "order.not_found":
            pass  # e.g. ask a human to look at the order
    path = os.environ.get("RECEIVER_HANDLED_LOG", "handled.log")
    await asyncio.to_thread(append_line, path, f"{webhook_id} {event_type} {order_id}\n")


def append_line(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)


class Inbox:
    """Received events by webhook-id: the deduplication record and the worker's queue."""

    def __init__(self, path: str) -> None:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # bodies hold payout links
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS inbox (webhook_id TEXT PRIMARY KEY, type TEXT NOT NULL,"
            " order_id TEXT NOT NULL, body BLOB, received_at REAL NOT NULL, handled_at REAL)"
        )
        self._db.execute(
            "CREATE INDEX IF NOT EXISTS inbox_pending ON inbox (received_at)"
            " WHERE handled_at IS NULL"
        )

    def add(self, webhook_id: str, event_type: str, order_id: str, body: bytes) -> bool:
        """Commit a new event; False (and nothing changes) when this webhook-id was seen."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO inbox VALUES (?, ?, ?, ?, ?, NULL)",
                (webhook_id, event_type, order_id, body, time.time()),
            )
            return cur.rowcount == 1

    def next_pending(self) -> tuple[str, str, str, bytes] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT webhook_id, type, order_id, body FROM inbox WHERE handled_at IS NULL"
                " ORDER BY received_at LIMIT 1"
            ).fetchone()
        return None if row is None else (row[0], row[1], row[2], row[3])

    def done(self, webhook_id: str) -> None:
        """Mark it handled and drop the body; the id stays, so repeats are still ignored."""
        with self._lock:
            self._db.execute(
                "UPDATE inbox SET handled_at = ?, body = NULL WHERE webhook_id = ?",
                (time.time(), webhook_id),
            )


async def work_loop(inbox: Inbox, wake: asyncio.Event) -> None:
    """Handle pending events one at a time, oldest first, then wait for more."""
    while True:
        wake.clear()  # before looking, so an event added meanwhile wakes the wait below
        while (row := await asyncio.to_thread(inbox.next_pending)) is not None:
            webhook_id, event_type, order_id, body = row
            try:
                await do_work(webhook_id, event_type, order_id, json.loads(body)["data"])
            except Exception as e:
                log.error(
                    "work failed (%s) type=%s webhook_id=%s order_id=%s",
                    type(e).__name__,
                    event_type,
                    webhook_id,
                    order_id,
                )
                await asyncio.sleep(RETRY_AFTER_FAILURE_S)
                continue
            await asyncio.to_thread(inbox.done, webhook_id)
            log.info("handled type=%s webhook_id=%s order_id=%s", event_type, webhook_id, order_id)
        await wake.wait()


def create_app() -> FastAPI:
    secret = os.environ.get("RECEIVER_WEBHOOK_SECRET")
    if not secret:
        raise SystemExit("set RECEIVER_WEBHOOK_SECRET to the webhook's whsec_... secret")
    verifier = Webhook(secret)
    inbox = Inbox(os.environ.get("RECEIVER_DB", "receiver.sqlite3"))
    wake = asyncio.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(work_loop(inbox, wake))
        yield
        task.cancel()  # unfinished work stays in the inbox for the next start
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.post(PATH, status_code=204)
    async def receive(request: Request) -> Response:
        body = await request.body()  # the raw bytes: re-serialized JSON would not verify
        try:
            event = verifier.verify(body, dict(request.headers))
        except (WebhookVerificationError, ValueError) as e:  # ValueError: malformed signature
            reason = e if isinstance(e, WebhookVerificationError) else "malformed"
            log.warning("rejected: %s", reason)
            return Response(status_code=401)
        webhook_id = request.headers["webhook-id"]
        event_type = event.get("type") if isinstance(event, dict) else None
        if event_type not in EVENT_TYPES:  # a newer orderwatch may send more: not an error
            log.info("ignored type=%s webhook_id=%s", event_type, webhook_id)
            return Response(status_code=204)
        data = event.get("data")
        order_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(order_id, str):
            log.warning("rejected: no order id webhook_id=%s", webhook_id)
            return Response(status_code=400)
        new = await asyncio.to_thread(inbox.add, webhook_id, event_type, order_id, body)
        log.info(
            "%s type=%s webhook_id=%s order_id=%s",
            "accepted" if new else "duplicate",
            event_type,
            webhook_id,
            order_id,
        )
        if new:
            wake.set()
        return Response(status_code=204)

    return app


app = create_app()
