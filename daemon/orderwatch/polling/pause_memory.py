"""The pauses outlive the process: a daemon killed within seconds of a 429 (or while the key
is refused) and restarted at once, as systemd's `Restart=` does, must not send before the
pause it was in has run out. The gate's state is written to the store's small facts whenever
a pause starts, grows or ends, and read back at start.

Times are stored as wall-clock epoch seconds (the monotonic clock does not survive a
restart). An auth pause is resumed only for the same API key: a restart with a new key
probes at once, as a reload with one does."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import structlog

from orderwatch.core.errors import StoreError
from orderwatch.polling.gate import Gate
from orderwatch.store.base import Store

log = structlog.get_logger("orderwatch.gate")
KEY = "gate"


def key_id(api_key: str) -> str:
    """Which key an auth pause was about, without storing the key."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


class PauseMemory:
    def __init__(self, store: Store, gate: Gate, wall: Callable[[], float], key: str) -> None:
        self._store = store
        self._gate = gate
        self._wall = wall
        self._key_id = key_id(key)

    def set_key(self, api_key: str) -> None:
        self._key_id = key_id(api_key)

    async def remember(self) -> None:
        """Write the gate's pauses as they are now; a store error is logged (this process's
        own gate holds the pause either way)."""
        g, wall = self._gate, self._wall()
        state = {
            "paused_until": wall + g.rate_paused_for(),
            "streak_429": g.streak_429,
            "auth_failed": g.auth_failed,
            "refusal": g.refusal,
            "key": self._key_id,
        }
        try:
            await self._store.set_meta(KEY, json.dumps(state))
        except StoreError as e:
            log.warning("gate.not_saved", error=str(e))

    async def recall(self) -> None:
        """At start: resume a pause the last process was in."""
        raw = await self._store.get_meta(KEY)
        if raw is None:
            return
        try:
            state = json.loads(raw)
            remaining = float(state["paused_until"]) - self._wall()
            streak = int(state["streak_429"])
            auth_failed = bool(state["auth_failed"]) and state.get("key") == self._key_id
            refusal = str(state.get("refusal", ""))
        except (ValueError, TypeError, KeyError):
            log.warning("gate.unreadable", hint="starting without a pause")
            return
        self._gate.resume(remaining, streak, auth_failed, refusal)
        if remaining > 0 or auth_failed:
            log.warning(
                "gate.resumed",
                paused_for_s=round(max(0.0, remaining), 3),
                streak=streak,
                auth_failed=auth_failed,
            )
