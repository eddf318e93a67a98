"""`orderwatch demo`: the bundled simulator, a daemon and a signature-checking webhook
receiver in a temp dir. Orders go from PROCESSING to final files and signed webhooks; then
it prints what it saw and exits 0 (1 if anything did not arrive as it should)."""

from __future__ import annotations

import asyncio
import base64
import secrets
import stat
import sys
import tempfile
from pathlib import Path

from orderwatch.config.load import load_settings_from_mapping
from orderwatch.config.secrets import register_secrets
from orderwatch.devtools.pusher import Pusher, PushOptions
from orderwatch.devtools.receiver import Receiver, running_receiver
from orderwatch.devtools.simulator import SimOptions, Simulator, running_simulator
from orderwatch.ops.daemon import Daemon
from orderwatch.ops.logs import configure_logging
from orderwatch.ops.oneshot import follow, settle_deliveries
from orderwatch.ops.run import run_daemon

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def demo_order_id() -> str:
    """An ID shaped like Runa's: O- and a 26-character ULID."""
    return "O-" + "".join(secrets.choice(_CROCKFORD) for _ in range(26))


async def run_demo(n_orders: int) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="orderwatch-demo-"))
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    api_key = "xx.demo-" + secrets.token_hex(8)
    options = SimOptions(api_key=api_key, complete_after=3.0, fail_ratio=0.2)
    receiver = Receiver(secret, verbose=True)
    async with running_simulator(options) as sim, running_receiver(receiver) as hook_url:
        settings = load_settings_from_mapping(
            {
                "runa": {"base_url": sim.base_url, "api_key": api_key, "timeout": "1s"},
                "rate_limit": {"requests_per_second": 10, "max_concurrency": 4},
                # Polling is the backstop here: Runa's own push (simulated, some lost on the
                # way) is the fast path. A lease this short keeps no poll in memory, so the
                # progress shown from the store moves with every answer.
                "polling": {"initial_delay": "1s", "max_interval": "10s", "lease": "3s"},
                "state_dir": str(tmp / "state"),
                "output_dir": str(tmp / "orders"),
                "webhooks": [{"url": hook_url, "secret": secret, "retry_schedule": ["1s"]}],
                "admin": {"listen": None},
                "push": {"listen": "127.0.0.1:0", "secret": secret},
                "logging": {"format": "console", "level": "info"},
            },
            source="<demo>",
        )
        configure_logging("console", "info")
        register_secrets(settings)
        ids = [demo_order_id() for _ in range(n_orders)]
        print(f"demo: state in {tmp}; following {len(ids)} orders", file=sys.stderr)
        got = await _drive(settings, ids, sim.sim, secret)
    if got is None:
        print(f"demo: interrupted; state in {tmp}", file=sys.stderr)
        return 130
    code, by_push = got
    print(
        f"\nlearned by push: {by_push} of {len(ids)} orders (Runa's own push, simulated with"
        f" {LOSS:.0%} lost on the way; the rest were found by polling, the backstop)"
    )
    return _summary(tmp / "orders", ids, receiver, code)


LOSS = 0.2  # share of simulated pushes lost: those orders are found by polling


async def _drive(
    settings: object, ids: list[str], sim: Simulator, secret: str
) -> tuple[int, int] | None:
    """The run's code and how many orders a push made final; None when Ctrl-C (or SIGTERM)
    stopped the daemon first: its store is closed then, so following it must end with it."""
    daemon = Daemon(settings)  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(run_daemon(daemon, stop))
    await daemon.ready.wait()
    assert daemon.push is not None
    url = f"http://127.0.0.1:{daemon.push.port}/runa/webhook"
    sim.pusher = Pusher(PushOptions(url, secret, loss=LOSS, delay_s=(0.0, 0.5)))
    await daemon.add_orders(ids)
    store = daemon.store
    assert store is not None

    async def show() -> tuple[int, int]:
        code = await asyncio.wait_for(follow(store, ids, limit_s=60), 90)
        await settle_deliveries(store, ids, 10)
        pushed = await store.pushes_for(ids)
        ended = {r.order_id: r.finished_at for r in await store.get_orders(ids)}
        by_push = sum(
            1 for i, p in pushed.items() if (ended.get(i) or 0) >= p.first_at
        )  # its push came before its final GET: that GET was the push's
        return code, by_push

    shown = asyncio.create_task(show())
    try:
        await asyncio.wait({shown, task}, return_when=asyncio.FIRST_COMPLETED)
        interrupted = stop.is_set()  # only a signal sets it before this point
    finally:
        stop.set()
        shown.cancel()
        results = await asyncio.gather(shown, return_exceptions=True)
        await task
    if interrupted:
        return None
    if isinstance(results[0], BaseException):
        raise results[0]
    return results[0]


def _summary(out: Path, ids: list[str], receiver: Receiver, code: int) -> int:
    files = sorted(out.glob("*.json"))
    print("\nfinal payload files (mode, name):")
    for f in files:
        print(f"  {stat.filemode(f.stat().st_mode)}  {f}")
    got = {e.order_id for e in receiver.events if e.verified}
    print(f"webhooks received with a valid signature: {len(got)} of {len(ids)} orders")
    ok = len(files) == len(ids) and got == set(ids)
    print("demo: ok" if ok else "demo: something did not arrive", file=sys.stderr)
    del code  # FAILED orders are part of the show; the demo judges arrival, not outcome
    return 0 if ok else 1
