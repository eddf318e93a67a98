"""Several replicas on one PostgreSQL database: SIGKILL the workers, cut one off the
database, and check that nothing is lost, nothing is reported twice differently, and the
cluster never exceeds the rate."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import psycopg
import pytest

from orderwatch.receiver import Receiver, running_receiver
from orderwatch.simulator import SimOptions, running_simulator

from harness import API_KEY, SECRET, spawn, until, write_config

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
RATE = 40
LEASE_S = 4.0


def replica_config(tmp_path: Path, base_url: str, dsn: str, hook_url: str | None) -> Path:
    hooks = (
        [{"url": hook_url, "secret": SECRET, "retry_schedule": ["200ms"] * 5}] if hook_url else []
    )
    return write_config(
        tmp_path,
        base_url,
        state_dsn=dsn,
        runa={"timeout": "1s"},
        rate_limit={"requests_per_second": RATE, "max_concurrency": 4},
        polling={"initial_delay": "0s", "max_interval": "500ms", "lease": f"{LEASE_S}s"},
        webhooks=hooks,
    )


async def pg_scalar(dsn: str, sql: str, *args: object) -> object:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(sql, args)  # type: ignore[arg-type]
        row = await cur.fetchone()
        return row[0] if row else None


async def test_three_replicas_survive_repeated_sigkill(tmp_path: Path, pg_dsn: str) -> None:
    """Kill the replica holding work, three times: every order ends final, every event is
    delivered under one id with one body, the server never sees more than the rate."""
    receiver = Receiver(SECRET)
    ids = [f"O-REP{i:03d}" for i in range(240)]
    opts = SimOptions(api_key=API_KEY, complete_after=1.5, fail_ratio=0.2, seed=11)
    takeovers: list[float] = []
    async with running_simulator(opts) as rs, running_receiver(receiver) as url:
        for i in range(12):  # orders end over ~35 s, so there is work to kill mid-flight
            rs.sim.create(ids[i::12], complete_after=2.0 + 3.0 * i)
        cfg = replica_config(tmp_path, rs.base_url, pg_dsn, url)
        assert await (await spawn("add", "-c", str(cfg), *ids)).wait() == 0
        quiet = {"stderr": asyncio.subprocess.DEVNULL}
        replicas = [await spawn("run", "-c", str(cfg), **quiet) for _ in range(3)]
        try:
            for k in range(3):
                seen = len(rs.sim.arrivals)

                async def progressed(seen: int = seen) -> bool:
                    return len(rs.sim.arrivals) >= seen + 30

                await until(progressed, timeout=30)
                victim = replicas[k]
                held = await pg_scalar(
                    pg_dsn,
                    "SELECT array_agg(id) FROM orders WHERE state = 'pending'"
                    " AND lease_owner LIKE %s",
                    f"%:{victim.pid}:%",
                )
                victim.send_signal(signal.SIGKILL)
                t_kill = time.monotonic()
                await victim.wait()
                replicas[k] = await spawn("run", "-c", str(cfg), **quiet)
                orphans = set(held or [])  # type: ignore[arg-type]
                if orphans:
                    # requests the victim had already sent may still land just after the kill
                    after = t_kill + 0.2

                    async def taken_over(orphans: set[str] = orphans, t: float = after) -> bool:
                        return any(ts > t and oid in orphans for ts, oid in rs.sim.requests)

                    await until(taken_over, timeout=30)
                    first = min(ts for ts, oid in rs.sim.requests if ts > after and oid in orphans)
                    takeovers.append(first - t_kill)

            async def all_heard() -> bool:
                return {e.order_id for e in receiver.events} == set(ids)

            await until(all_heard, timeout=90)
        finally:
            for r in replicas:
                if r.returncode is None:
                    r.send_signal(signal.SIGTERM)
            codes = [await asyncio.wait_for(r.wait(), 20) for r in replicas]
        assert codes == [0, 0, 0]
        pending = await pg_scalar(pg_dsn, "SELECT COUNT(*) FROM orders WHERE state = 'pending'")
        assert pending == 0
        assert rs.sim.max_in_window(1.0) <= RATE
    by_order: dict[str, set[tuple[str, bytes]]] = {}
    for e in receiver.events:
        assert e.verified
        by_order.setdefault(e.order_id, set()).add((e.event_id, e.body))
    assert all(len(v) == 1 for v in by_order.values())
    # takeover = the lease running out + the wait behind orders already overdue (this test
    # keeps the limiter saturated on purpose); documented in docs/replicas.md
    print(f"takeover after SIGKILL (s): {[round(t, 2) for t in takeovers]} (lease {LEASE_S}s)")
    # and nobody touched an orphan before its lease ran out: no double polling
    assert takeovers and all(t >= LEASE_S * 0.95 for t in takeovers)


class Proxy:
    """A TCP relay to PostgreSQL that can be cut (listener and live connections) and restored."""

    def __init__(self, port: int = 5432) -> None:
        self.target = port
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

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(r, uw), pump(ur, w))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.links):
            w.transport.abort()
        self.links.clear()
        await self.server.wait_closed()

    async def restore(self) -> None:
        await self.start()


async def test_partitioned_replica_stops_within_lease_and_resumes(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Cut the replica's database connection: it sends nothing once its leases have run out;
    restore it: polling resumes and every order still ends final."""
    proxy = Proxy()
    await proxy.start()
    dsn = pg_dsn.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    ids = [f"O-PART{i:03d}" for i in range(60)]
    async with running_simulator(SimOptions(api_key=API_KEY, complete_after=3600)) as rs:
        cfg = replica_config(tmp_path, rs.base_url, dsn, None)
        assert await (await spawn("add", "-c", str(cfg), *ids)).wait() == 0
        proc = await spawn("run", "-c", str(cfg), stderr=asyncio.subprocess.DEVNULL)
        try:

            async def polling() -> bool:
                return len(rs.sim.arrivals) >= 30

            await until(polling, timeout=30)
            await proxy.cut()
            t_cut = time.monotonic()
            await asyncio.sleep(LEASE_S + 2.0)
            late = [t for t in rs.sim.arrivals if t > t_cut + LEASE_S]
            assert late == []  # stopped polling within its lease time
            assert proc.returncode is None  # and is still running
            await proxy.restore()
            t_back = time.monotonic()

            async def resumed() -> bool:
                return any(t > t_back for t in rs.sim.arrivals)

            await until(resumed, timeout=30)
            rs.sim.complete(ids)

            async def all_final() -> bool:
                n = await pg_scalar(pg_dsn, "SELECT COUNT(*) FROM orders WHERE state = 'final'")
                return n == len(ids)

            await until(all_final, timeout=60)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 20)
            await proxy.cut()
        assert code == 0
        assert rs.sim.max_in_window(1.0) <= RATE


async def test_cli_against_the_shared_store(tmp_path: Path, pg_dsn: str) -> None:
    """add, wait (as one more replica, under the cluster limiter), status and replay all work
    on PostgreSQL state."""
    import json

    receiver = Receiver(SECRET)
    async with (
        running_simulator(SimOptions(api_key=API_KEY, complete_after=0.2)) as rs,
        running_receiver(receiver) as url,
    ):
        cfg = replica_config(tmp_path, rs.base_url, pg_dsn, url)
        assert await (await spawn("add", "-c", str(cfg), "O-PG1", "O-PG2")).wait() == 0
        wait = await spawn("wait", "-c", str(cfg), "O-PG1", "O-PG2", stdout=asyncio.subprocess.PIPE)
        out, _ = await wait.communicate()
        assert wait.returncode == 0 and out.decode().count("COMPLETED") == 2
        status = await spawn(
            "status", "-c", str(cfg), "O-PG1", "--json", stdout=asyncio.subprocess.PIPE
        )
        report = json.loads((await status.communicate())[0])
        (order,) = report["orders"]
        assert order["state"] == "final" and order["deliveries"][0]["state"] == "delivered"
        replay = await spawn("replay", "-c", str(cfg), "O-PG1", stdout=asyncio.subprocess.PIPE)
        await replay.communicate()
        assert replay.returncode == 0
    ids = [e.event_id for e in receiver.events if e.order_id == "O-PG1"]
    assert len(ids) == 2 and len(set(ids)) == 1
