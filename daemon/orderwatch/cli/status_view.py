"""`orderwatch status`: gather from the store, render as a table or JSON."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from dataclasses import asdict
from typing import Any

from orderwatch.config.models import Settings
from orderwatch.core.errors import OrderwatchError
from orderwatch.ops.progress import answers_text
from orderwatch.store.open import daemon_running, open_store, state_exists


async def gather_status(settings: Settings, ids: list[str]) -> dict[str, Any]:
    shared = settings.state_dsn is not None
    if not state_exists(settings):
        raise OrderwatchError(
            f"no state in {settings.state_dir}: nothing was added there (is state_dir right?)"
        )
    async with AsyncExitStack() as stack:
        store = await open_store(settings, stack, daemon=False, now=time.time())
        report: dict[str, Any] = {
            "store": "postgresql" if shared else "sqlite",
            "daemon_running": daemon_running(settings),  # embedded state only
        }
        if not ids:
            report["orders"] = await store.counts()
            report["deliveries"] = await store.delivery_counts()
            report["oldest_pending_added_at"] = await store.oldest_pending_added_at()
            return report
        rows = await store.get_orders(ids)
        deliveries = await store.get_deliveries(ids)
        by_order: dict[str, list[dict[str, Any]]] = {}
        for d in deliveries:
            by_order.setdefault(d.order_id, []).append(asdict(d))
        pushes = {k: asdict(v) for k, v in (await store.pushes_for(ids)).items()}
        report["orders"] = [
            {
                **asdict(r),
                "deliveries": by_order.get(r.order_id, []),
                "push": pushes.get(r.order_id),
            }
            for r in rows
        ]
        known = {r.order_id for r in rows}
        report["unknown"] = [i for i in ids if i not in known]
        return report


def _ago(t: float | None, now: float) -> str:
    if t is None:
        return "-"
    delta = t - now
    word = "in " if delta >= 0 else ""
    s = abs(delta)
    text = f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h"
    return f"{word}{text}" if delta >= 0 else f"{text} ago"


def render_status(report: dict[str, Any], now: float) -> str:
    if report.get("store") == "postgresql":
        lines = ["store: PostgreSQL (shared by every replica)"]
    else:
        lines = [f"daemon: {'running' if report['daemon_running'] else 'not running'}"]
    orders = report["orders"]
    if isinstance(orders, dict):
        lines.append("orders:     " + "  ".join(f"{k} {v}" for k, v in orders.items()))
        dcounts = report["deliveries"]
        lines.append("deliveries: " + "  ".join(f"{k} {v}" for k, v in dcounts.items()))
        oldest = report.get("oldest_pending_added_at")
        if oldest is not None:
            lines.append(f"oldest pending added {_ago(oldest, now)}")
        return "\n".join(lines)
    header = ("ORDER", "STATE", "RESULT", "FOUND BY", "ANSWERS", "NEXT POLL", "LAST ERROR")
    table = [header]
    for o in orders:
        table.append(
            (
                o["order_id"],
                o["state"],
                o["final_status"] or "-",
                (o.get("found_by") or "-") if o["state"] == "final" else "-",
                answers_text(o["polls"], o["error_streak"]),
                _ago(o["next_poll_at"], now) if o["state"] == "pending" else "-",
                o["last_error"] or "-",
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    for o in orders:
        if push := o.get("push"):  # Runa's own push (kept three days)
            lines.append(
                f"  {o['order_id']} <- push: {push['count']} received, first"
                f" {_ago(push['first_at'], now)}, last {_ago(push['last_at'], now)}"
            )
        for d in o["deliveries"]:
            nxt = _ago(d["next_attempt_at"], now) if d["state"] == "pending" else "-"
            lines.append(
                f"  {o['order_id']} -> {d['sink']}: {d['state']}, {d['attempts']} attempt(s),"
                f" last {d['last_outcome'] or '-'}, next {nxt}"
            )
    for missing in report.get("unknown", []):
        lines.append(f"{missing}: not tracked")
    return "\n".join(lines)
