"""Test harness: a daemon in-process or as a child process, against the bundled simulator."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import socket
import struct
import sys
import termios
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from structlog.testing import capture_logs

from orderwatch.config.load import load_settings_from_mapping
from orderwatch.config.models import PollingSettings, Settings
from orderwatch.core.pulse import Pulse
from orderwatch.ops.daemon import Daemon
from orderwatch.ops.systemd import Notifier
from orderwatch.polling.client import RunaClient
from orderwatch.polling.gate import Gate
from orderwatch.polling.limiter import SpacedLimiter
from orderwatch.polling.scheduler import Poller, PollerDeps
from orderwatch.store.base import Claim, Store

API_KEY = "xx.test-key-0123456789"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
REPO = Path(__file__).resolve().parents[1]


class FakeClock:
    """Wall-clock seconds that move only when a test moves them (starting near real time, so
    a webhook receiver's +-5 minute timestamp tolerance still holds)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def claim_at(t0: float, **kw: Any) -> Claim:
    """A claim on O-1 due and added at `t0`, never polled, leased for two minutes; `kw`
    overrides any field."""
    base: dict[str, Any] = dict(
        order_id="O-1",
        fence=1,
        due_at=t0,
        added_at=t0,
        polls=0,
        error_streak=0,
        first_404_at=None,
        lease_until=t0 + 120,
    )
    return Claim(**{**base, **kw})


def one_worker(
    store: Store,
    client: RunaClient,
    *,
    polling: PollingSettings,
    output_dir: Path,
    wall: Callable[[], float],
    owner: str = "t",
    gate: Gate | None = None,
    start_full: bool = True,
    **deps: Any,
) -> Poller:
    """A poller of one worker, for driving polls by hand (`poll_one`) or running it alone;
    `deps`: any other PollerDeps field (hold_s, write_payload...)."""
    return Poller(
        PollerDeps(
            store=store,
            client=client,
            limiter=SpacedLimiter(1000, start_full=start_full),
            gate=gate or Gate(max_interval_s=1.0),
            polling=polling,
            output_dir=output_dir,
            sinks=[],
            owner=owner,
            max_concurrency=1,
            rate=1000,
            request_timeout_s=2.0,
            wall=wall,
            **deps,
        )
    )


def config_dict(tmp: Path, base_url: str, **sections: Any) -> dict[str, Any]:
    """A config for tests: fast polling, no admin server unless asked."""
    cfg: dict[str, Any] = {
        "runa": {"base_url": base_url, "api_key": API_KEY, "timeout": "2s"},
        "rate_limit": {"requests_per_second": 200, "max_concurrency": 8},
        "polling": {
            "initial_delay": "0s",
            "backoff_factor": 1.5,
            "max_interval": "200ms",
            "jitter": 0.1,
            "not_found_grace": "1s",
        },
        "state_dir": str(tmp / "state"),
        "output_dir": str(tmp / "orders"),
        "admin": {"listen": None},
        "shutdown_timeout": "2s",
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def settings_for(tmp: Path, base_url: str, **sections: Any) -> Settings:
    return load_settings_from_mapping(config_dict(tmp, base_url, **sections), source="<test>")


def write_config(tmp: Path, base_url: str, **sections: Any) -> Path:
    path = tmp / "orderwatch.yaml"
    path.write_text(yaml.safe_dump(config_dict(tmp, base_url, **sections)))
    return path


@asynccontextmanager
async def running_daemon(settings: Settings, **kw: Any) -> AsyncIterator[Daemon]:
    """A daemon in this event loop; stopped (as by SIGTERM) on exit."""
    daemon = Daemon(settings, **kw)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait([task, ready], return_when="FIRST_COMPLETED")
    if task.done():
        task.result()
    try:
        yield daemon
    finally:
        stop.set()
        await task


async def until(
    predicate: Callable[[], Awaitable[bool]],
    *changes: Pulse,
    timeout: float = 20.0,
    interval: float = 0.05,
) -> None:
    """Wait for an async predicate to become true (state observed, not time asserted).

    With `changes` (the pulses of the parts whose state it reads: `changes_of(daemon)`, the
    simulator's, a receiver's), it is looked at again each time one fires, and only then.
    Without, every `interval`: for what only a child process or the OS can tell."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        woken = [c.next() for c in changes]  # before looking: no change is missed
        if await predicate():
            return
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError("condition not reached in time")
        if woken:
            await asyncio.wait(woken, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.sleep(min(interval, left))


@contextmanager
def logged() -> Iterator[tuple[list[MutableMapping[str, Any]], Pulse]]:
    """structlog's `capture_logs`, and a pulse that fires at each line (to wait for one)."""
    line = Pulse()

    def tell(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
        line()
        return event

    with capture_logs(processors=[tell]) as logs:
        yield logs, line


def changes_of(daemon: Daemon) -> tuple[Pulse, ...]:
    """What a running daemon signals as its state changes: each poll's and delivery attempt's
    end, the gate's pauses, each watchlist chunk and scan."""
    assert daemon.poller is not None and daemon.deliverer is not None
    assert daemon.watcher is not None
    return (
        daemon.poller.d.progress,
        daemon.deliverer.progress,
        daemon.gate.changed,
        daemon.watcher.progress,
    )


async def states(daemon: Daemon, ids: list[str]) -> dict[str, str]:
    assert daemon.store is not None
    return {r.order_id: r.state for r in await daemon.store.get_orders(ids)}


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERWATCH_")}
    env["PYTHONPATH"] = str(REPO / "daemon")
    return env


async def spawn(
    *args: str, env: dict[str, str] | None = None, **kw: Any
) -> asyncio.subprocess.Process:
    """`python -m orderwatch ARGS` as a real child process (`env` is added to a clean one)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orderwatch", *args, env={**child_env(), **(env or {})}, **kw
    )


class Proxy:
    """A TCP relay to PostgreSQL that can be cut (listener and live connections) and restored."""

    def __init__(self, port: int = 5432, reply_delay: Callable[[], float] | None = None) -> None:
        self.target = port
        self.reply_delay = reply_delay  # seconds to hold each piece of the server's answers
        self.server: asyncio.Server | None = None
        self.port = 0
        self.links: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _link(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            w.close()
            return
        self.links |= {w, uw}

        async def pump(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay: Callable[[], float]
        ) -> None:
            try:
                while data := await src.read(65536):
                    if (seconds := delay()) > 0:
                        await asyncio.sleep(seconds)  # in order: later pieces wait behind it
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(
            pump(r, uw, lambda: 0.0), pump(ur, w, self.reply_delay or (lambda: 0.0))
        )

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.links):
            w.transport.abort()
        self.links.clear()
        await self.server.wait_closed()

    async def restore(self) -> None:
        await self.start()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def http(method: str, url: str, **kw: object) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.request(method, url, **kw) as r:  # type: ignore[arg-type]
        return r.status, await r.text()


class RecordingNotifier(Notifier):
    """What systemd would be told, in order."""

    def __init__(self) -> None:
        super().__init__(None)
        self.sent: list[str] = []
        self.changed = Pulse()

    def send(self, *fields: str) -> bool:
        self.sent.append(fields[0])
        self.changed()
        return True


async def run_in_pty(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`orderwatch ARGS` with a terminal (80 columns) as stdin, stdout and stderr: (exit
    code, everything the terminal was sent)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    p = await spawn(*args, env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []
    loop = asyncio.get_running_loop()
    while True:
        try:
            chunk = await asyncio.wait_for(loop.run_in_executor(None, os.read, master, 4096), 30)
        except OSError:  # EIO: every holder of the terminal's other end has closed it
            break
        if not chunk:
            break
        chunks.append(chunk)
    code = await p.wait()
    os.close(master)
    return code, b"".join(chunks).decode(errors="replace")
