"""Shared bench plumbing: a simulator in its own process, a daemon in this one, a table."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
API_KEY = "xx.bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def simulator_process(*args: str) -> AsyncIterator[str]:
    """`orderwatch simulate` in a child process (the second core); yields its base URL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orderwatch",
        "simulate",
        "--port",
        str(port),
        "--api-key",
        API_KEY,
        *args,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/v2"
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                try:
                    async with s.get(f"{base}/ping", headers={"X-Api-Key": API_KEY}) as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        await proc.wait()


async def sim_stats(base: str) -> dict[str, Any]:
    root = base.removesuffix("/v2")
    async with aiohttp.ClientSession() as s, s.get(f"{root}/_sim/stats") as r:
        return dict(await r.json())


async def sim_post(base: str, path: str, body: dict[str, Any]) -> None:
    root = base.removesuffix("/v2")
    async with aiohttp.ClientSession() as s, s.post(f"{root}{path}", json=body) as r:
        r.raise_for_status()


@dataclass
class Row:
    bench: str
    metric: str
    value: float | str
    target: str = ""
    ok: bool | None = None
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, *args: Any, **kw: Any) -> None:
        row = Row(*args, **kw)
        self.rows.append(row)
        print(_fmt(row), flush=True)

    def table(self) -> str:
        head = f"{'benchmark':<12} {'metric':<44} {'value':>14}  {'target':<14} ok"
        return "\n".join([head, "-" * len(head), *(_fmt(r) for r in self.rows)])

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps({"machine": machine(), "rows": [r.__dict__ for r in self.rows]}, indent=2)
        )


def _fmt(r: Row) -> str:
    v = f"{r.value:,.3f}" if isinstance(r.value, float) else str(r.value)
    ok = "" if r.ok is None else ("yes" if r.ok else "NO")
    return f"{r.bench:<12} {r.metric:<44} {v:>14}  {r.target:<14} {ok} {r.note}".rstrip()


def machine() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }


def proc_status(pid: int, key: str, tid: int | None = None) -> int | None:
    """A number from /proc/PID/status (of thread TID with `tid`): kB for Vm*, else a count."""
    path = f"/proc/{pid}/status" if tid is None else f"/proc/{pid}/task/{tid}/status"
    with open(path) as f:
        for line in f:
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    return None


def rss_mb(pid: int) -> float:
    kb = proc_status(pid, "VmRSS")
    return float("nan") if kb is None else kb / 1024


def peak_rss_mb(pid: int) -> float:
    kb = proc_status(pid, "VmHWM")
    return float("nan") if kb is None else kb / 1024


def wakeups(pid: int) -> int:
    """How often the main thread (the event loop) has gone to sleep and been woken."""
    return proc_status(pid, "voluntary_ctxt_switches", tid=pid) or 0


def cpu_seconds(pid: int) -> float:
    """CPU time of a process, all threads. From the scheduler's run time in ns where the kernel
    keeps it (/proc/PID/task/*/schedstat); else utime + stime, which count whole 10 ms ticks,
    each charged to whoever runs when it fires: a daemon that wakes a few times a second then
    reads in steps of 0.1% of a core per 10 s window."""
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def diagnostic_main(
    doc: str | None,
    one_round: Callable[[str, float], Awaitable[None]],
    seconds: float,
    rounds: int,
) -> None:
    """`python -m bench.X [--seconds S] [--rounds N]` for a diagnostic of the overhead loop:
    `one_round(base_url, seconds)` N times against one simulator, each round printed."""
    from orderwatch.core import aio

    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    ap.add_argument("--seconds", type=float, default=seconds)
    ap.add_argument("--rounds", type=int, default=rounds)
    args = ap.parse_args()

    async def main() -> None:
        async with simulator_process("--complete-after", "100d") as base:
            for i in range(args.rounds):
                print(f"round {i + 1}:")
                await one_round(base, args.seconds)

    aio.run(main())
