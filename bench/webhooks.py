"""5. Webhook throughput: final events already in the outbox, delivered to a local receiver
in another process. Deliveries per second, end to end (sign, POST, record)."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.common import REPO, Report, free_port
from orderwatch.config.load import load_settings_from_mapping
from orderwatch.delivery.events import make_event
from orderwatch.delivery.outbox import Deliverer
from orderwatch.delivery.sinks import build_sinks
from orderwatch.store.sqlite import SqliteStore

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
RECEIVER = """
import sys
from aiohttp import web
async def ok(request):
    await request.read()
    return web.Response(status=204)
app = web.Application()
app.router.add_post("/hook", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


async def run(report: Report, smoke: bool) -> None:
    n = 1000 if smoke else 5000
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", RECEIVER, str(port), env=env)
    url = f"http://127.0.0.1:{port}/hook"
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(100):
                try:
                    async with s.post(url, data=b"{}"):
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
        with tempfile.TemporaryDirectory() as tmp:
            settings = load_settings_from_mapping(
                {
                    "runa": {"api_key": "xx.k"},
                    "state_dir": str(Path(tmp) / "state"),
                    "output_dir": str(Path(tmp) / "orders"),
                    "webhooks": [{"url": url, "secret": SECRET, "max_concurrency": 32}],
                }
            )
            store = await SqliteStore.open(Path(tmp) / "state", daemon=True, now=time.time())
            sinks = build_sinks(settings)
            ids = [f"O-HOOK{i:06d}" for i in range(n)]
            now = time.time()
            await store.add_orders(ids, now, now)
            claims = await store.claim_due(now, n, "bench", 600)
            data = {"status": "COMPLETED", "items": [{"payout": {"url": "https://x/y"}}]}
            for c in claims:
                ev = make_event(c.order_id, "COMPLETED", {"id": c.order_id, **data}, now)
                await store.finish(c, "final", "COMPLETED", ev, [x.id for x in sinks])
            t0 = time.monotonic()
            await Deliverer(store, sinks, owner="bench").run_until_idle()
            elapsed = time.monotonic() - t0
            counts = await store.delivery_counts()
            for sink in sinks:
                await sink.close()
            await store.close()
    finally:
        proc.terminate()
        await proc.wait()
    rate = counts["delivered"] / elapsed
    report.add(
        "webhooks",
        f"deliveries/s ({n:,} events, receiver process)",
        rate,
        ">= 1000/s",
        rate >= 1000,
        f"{counts['delivered']} delivered",
    )
