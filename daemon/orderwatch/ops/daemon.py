"""The wiring: build the object graph from the settings, run it, shut it down in one order.

This is the only module that turns config into objects. The order on the way down is fixed:
stop intake (watchlists, admin writes), let in-flight polls and deliveries finish within
`shutdown_timeout`, cancel the rest, give leases back, close the HTTP session, the admin
server, then the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from typing import Any

import structlog

from orderwatch.config.callbacks import Callback
from orderwatch.config.models import PollingSettings, Settings
from orderwatch.config.secrets import register_secrets
from orderwatch.core.errors import ConfigError, StoreError, UsageError
from orderwatch.core.rate_limit import RateLimiter
from orderwatch.delivery.outbox import Deliverer
from orderwatch.delivery.payload_files import prepare_output_dir
from orderwatch.delivery.sinks import build_sinks
from orderwatch.intake.push import PushListener
from orderwatch.intake.watcher import WatchlistWatcher
from orderwatch.ops.admin import start_admin
from orderwatch.ops.config_log import config_summary
from orderwatch.ops.health import Health
from orderwatch.ops.metrics import Metrics
from orderwatch.ops.push_wiring import serve_push
from orderwatch.ops.status_page import StatusSnapshot
from orderwatch.ops.status_service import ReplayResult, StatusService
from orderwatch.ops.systemd import Notifier
from orderwatch.polling.cadence import Cadence
from orderwatch.polling.cadence_memory import CadenceMemory
from orderwatch.polling.client import RunaClient
from orderwatch.polling.gate import Gate
from orderwatch.polling.limiter import SpacedLimiter
from orderwatch.polling.pause_memory import PauseMemory
from orderwatch.polling.scheduler import Poller, PollerDeps
from orderwatch.store.base import GOODBYE_S, Store
from orderwatch.store.open import open_store

log = structlog.get_logger("orderwatch.daemon")


def api_key_of(settings: Settings, source: str = "config") -> str:
    if settings.runa.api_key is None:
        raise ConfigError.single("runa.api_key", "is required (or runa.api_key_file)", source)
    return settings.runa.api_key.get_secret_value()


# What a reload cannot change in a running daemon: logged as needs_restart when it differs.
# The API key, polling (but its lease), watchlists and the 429/auth back-off cap apply live.
RESTART_KEYS: dict[str, Callable[[Settings], object]] = {
    "runa": lambda s: s.runa.model_dump(exclude={"api_key", "api_key_file"}),
    "rate_limit": lambda s: s.rate_limit,
    "polling.lease": lambda s: s.polling.lease_s,
    "state_dir": lambda s: s.state_dir,
    "state_dsn": lambda s: s.state_dsn,
    "output_dir": lambda s: s.output_dir,
    "webhooks": lambda s: s.webhooks,
    "commands": lambda s: s.commands,
    "command_timeout": lambda s: s.command_timeout_s,
    "callbacks": lambda s: s.callbacks,
    "admin": lambda s: s.admin,
    "push.listen": lambda s: (s.push.listen, s.push.path),  # its secrets apply at once
    "logging": lambda s: s.logging,
    "shutdown_timeout": lambda s: s.shutdown_timeout_s,
}


class Daemon:
    """One running orderwatch. `await Daemon(settings).run(stop)` until `stop` is set."""

    def __init__(
        self,
        settings: Settings,
        *,
        callbacks: Sequence[Callback] = (),
        reload: Callable[[], Settings] | None = None,
        wall: Callable[[], float] = time.time,
        notifier: Notifier | None = None,
        role: str = "run",
    ) -> None:
        self.settings = settings
        self._built = settings  # what the running parts were made from: reloads compare to it
        self.role = role  # recorded in the embedded state's lock: `run`, or `wait`
        self._callbacks = tuple(callbacks)
        self._reload = reload
        self.wall = wall
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"
        self.metrics = Metrics()
        self.notifier = notifier or Notifier.from_env(os.environ)
        self.ready = asyncio.Event()
        self.store: Store | None = None
        self.gate = Gate(settings.polling.max_interval_s)
        self.poller: Poller | None = None
        self.health: Health | None = None
        self.pauses: PauseMemory | None = None
        self.cadence = Cadence()
        self.cadence_memory: CadenceMemory | None = None
        self.deliverer: Deliverer | None = None
        self.watcher: WatchlistWatcher | None = None
        self.status: StatusService | None = None  # what the status page shows (ops.admin)
        self.push: PushListener | None = None
        self._stop: asyncio.Event | None = None
        self._reload_pending = False  # a SIGHUP that came before start-up ended
        self._stopping_told = False

    # -- intake --------------------------------------------------------------------------
    async def add_orders(self, order_ids: Iterable[str]) -> int:
        """Enqueue valid IDs (the caller validated them); durable when it returns."""
        assert self.store is not None
        now = self.wall()
        added = await self.store.add_orders(
            order_ids, now, now + self.cadence.first_delay(self.settings.polling)
        )
        if added and self.poller is not None:
            self.poller.wake()
        return added

    # -- run -----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        s = self.settings
        register_secrets(s)  # whoever embeds us, the log redactor knows every secret
        async with AsyncExitStack() as stack:
            self.store = await open_store(s, stack, daemon=True, now=self.wall(), role=self.role)
            self.watcher = WatchlistWatcher(s.watchlists, self.add_orders, self.store)
            self.pauses = PauseMemory(self.store, self.gate, self.wall, api_key_of(s))
            await self.pauses.recall()
            self.cadence_memory = CadenceMemory(self.store, self.cadence, self._polling, self.wall)
            await self.cadence_memory.recall()
            shared = s.state_dsn is not None  # replicas may write it too
            await asyncio.to_thread(prepare_output_dir, s.output_dir, shared=shared)
            limiter = self._limiter(s.rate_limit.requests_per_second)
            self.metrics.rate_limit.set(s.rate_limit.requests_per_second)
            client = await stack.enter_async_context(
                RunaClient(
                    s.runa.base_url,
                    api_key_of(s),
                    api_version=s.runa.api_version,
                    timeout_s=s.runa.timeout_s,
                    max_connections=s.rate_limit.max_concurrency,
                    wall_clock=self.wall,
                    before_send=limiter.confirm,
                )
            )
            self.client = client
            sinks = build_sinks(s, extra_callbacks=self._callbacks)
            for sink in sinks:
                stack.push_async_callback(sink.close)
            self.deliverer = Deliverer(
                self.store, sinks, owner=self.owner, clock=self.wall, metrics=self.metrics.delivery
            )
            poller = self.poller = Poller(self._poller_deps(client, limiter, [x.id for x in sinks]))
            self.status = StatusService(
                self.store, self.gate, self.deliverer, self.metrics, s, self.readiness, self.wall
            )
            self.health = Health(
                self.store,
                self.metrics,
                self.notifier,
                self.gate,
                heartbeat=lambda: poller.heartbeat,
                lifecycle=self._lifecycle,
                wall=self.wall,
            )
            await self._serve(stack, stop)

    def _poller_deps(
        self, client: RunaClient, limiter: RateLimiter, sink_ids: list[str]
    ) -> PollerDeps:
        s = self.settings
        assert self.store is not None and self.deliverer is not None
        return PollerDeps(
            store=self.store,
            client=client,
            limiter=limiter,
            gate=self.gate,
            polling=s.polling,
            output_dir=s.output_dir,
            sinks=sink_ids,
            owner=self.owner,
            max_concurrency=s.rate_limit.max_concurrency,
            rate=s.rate_limit.requests_per_second,
            lease_s=s.polling.lease_s,
            request_timeout_s=s.runa.timeout_s,
            metrics=self.metrics.poll,
            wall=self.wall,
            on_final=self.deliverer.wake,
            pauses=self.pauses,
            cadence=self.cadence,
        )

    def _polling(self) -> PollingSettings:
        return self.settings.polling

    def _limiter(self, rate: float) -> RateLimiter:
        """The cluster-wide limiter when the store offers one (PostgreSQL), else a local one."""
        assert self.store is not None
        return self.store.shared_limiter(rate) or SpacedLimiter(rate)

    async def _serve(self, stack: AsyncExitStack, stop: asyncio.Event) -> None:
        assert self.poller is not None and self.deliverer is not None and self.store is not None
        assert self.watcher is not None and self.health is not None and self.status is not None
        assert self.cadence_memory is not None
        if stop.is_set():  # SIGTERM during start-up: never tell systemd we are ready
            return
        admin = await start_admin(self, self.settings.admin)
        if admin is not None:
            stack.push_async_callback(admin.cleanup)
        self.push = await serve_push(self, stack)
        gc.freeze()  # start-up objects never need scanning again: shorter GC pauses later
        self.ready.set()
        self.notifier.ready()
        log.info("daemon.ready", owner=self.owner, state=self._state_label())
        log.info("config.loaded", **config_summary(self.settings, len(self._callbacks)))
        if self._reload_pending:
            self.reload()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(
                    self.poller.run(stop, self.settings.shutdown_timeout_s), name="poller"
                )
                tg.create_task(
                    self.deliverer.run(stop, self.settings.shutdown_timeout_s), name="deliverer"
                )
                tg.create_task(self.cadence_memory.run(stop), name="cadence")
                # Nothing to drain in these: they end at the stop, even inside a store call.
                background = [
                    tg.create_task(self.watcher.run(stop), name="watchlists"),
                    tg.create_task(self.health.run(stop), name="housekeeping"),
                    tg.create_task(self.deliverer.warn_stranded(), name="stranded-deliveries"),
                    tg.create_task(self.status.count_requests(stop), name="request-count"),
                ]
                tg.create_task(self._on_stop(stop, background), name="on-stop")
        finally:
            self._tell_stopping()
            await self._release_leases()

    async def _on_stop(self, stop: asyncio.Event, background: list[asyncio.Task[None]]) -> None:
        await stop.wait()
        self._tell_stopping()
        for task in background:
            task.cancel()

    async def _release_leases(self) -> None:
        """Leased work becomes due at once for whoever runs next; like the poller's hand-back
        a courtesy with a bound (the leases also run out by themselves)."""
        assert self.store is not None and self.poller is not None
        if self.poller.store_failed_at_stop:
            return  # the poller's hand-back just found the store gone: no second wait
        try:
            async with asyncio.timeout(GOODBYE_S):
                await self.store.release_owner(self.owner, self.wall())
        except (TimeoutError, StoreError) as e:
            log.warning(
                "store.release_failed",
                error=str(e) or f"no answer in {GOODBYE_S:g}s",
                hint="the leases run out by themselves (polling.lease)",
            )

    def _tell_stopping(self) -> None:
        """STOPPING=1 as the drain starts (systemd, and /readyz, see it at once)."""
        if not self._stopping_told:
            self._stopping_told = True
            self.notifier.stopping()
            log.info("daemon.stopping")

    @property
    def stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def _state_label(self) -> str:
        return "postgresql" if self.settings.state_dsn else str(self.settings.state_dir)

    async def refresh_gauges(self, deliveries: bool = False) -> dict[str, int]:
        assert self.health is not None
        return await self.health.refresh(deliveries)

    async def render_metrics(self) -> bytes:
        with contextlib.suppress(StoreError):  # families still render; /readyz says what is wrong
            await self.refresh_gauges(deliveries=True)
        return self.metrics.render()

    async def ping_store(self) -> None:
        assert self.health is not None
        await self.health.check_store()

    async def order_report(self, order_id: str) -> dict[str, Any] | None:
        assert self.status is not None
        return await self.status.order_report(order_id)

    async def status_snapshot(self) -> StatusSnapshot:
        assert self.status is not None  # made before the admin server starts
        return await self.status.snapshot()

    async def replay(self, order_ids: Sequence[str]) -> ReplayResult:
        assert self.status is not None
        return await self.status.replay(order_ids)

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason); see ops.health."""
        if self.health is None:
            return False, "stopping" if self.stopping else "starting"
        return self.health.readiness()

    def _lifecycle(self) -> str | None:
        if self.stopping:
            return "stopping"
        return None if self.ready.is_set() else "starting"

    # -- reload --------------------------------------------------------------------------
    def reload(self) -> bool:
        """SIGHUP: load the config again; apply what can change live, keep the old on error."""
        if self._reload is None:
            return False
        if self.stopping:
            log.info("config.reload_ignored", reason="stopping")
            return False
        if not self.ready.is_set():  # applied once started: there is nothing to apply it to
            self._reload_pending = True
            log.info("config.reload_deferred", reason="starting")
            return False
        self._reload_pending = False
        self.notifier.reloading()
        try:
            new = self._reload()
            api_key_of(new)  # required, as at start
            self._apply(new)
        except Exception as e:  # whatever it is, the old config stays and systemd hears so
            problems = str(e).splitlines() if isinstance(e, UsageError) else [repr(e)]
            log.error("config.reload_rejected", problems=problems)
            self.notifier.ready()
            return False
        self.notifier.ready()
        return True

    def _apply(self, new: Settings) -> None:
        register_secrets(new)  # before anything can log the new key
        old, self.settings = self.settings, new
        if new.runa.api_key != old.runa.api_key and new.runa.api_key is not None:
            self.client.set_api_key(new.runa.api_key.get_secret_value())
            if self.pauses is not None:
                self.pauses.set_key(new.runa.api_key.get_secret_value())
            self.gate.reset_auth()
        if self.poller is not None:
            self.poller.set_polling(new.polling)
        self.gate.max_interval_s = new.polling.max_interval_s
        assert self.watcher is not None  # a reload is applied once started
        self.watcher.set_paths(new.watchlists)
        built = self._built  # not `old`: a change waiting for a restart is still waiting
        restart_needed = [k for k, part in RESTART_KEYS.items() if part(new) != part(built)]
        log.info("config.reloaded", needs_restart=restart_needed or None)
        self.watcher.rescan()
