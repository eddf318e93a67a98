"""What only the PostgreSQL backend has to do: the cluster-wide limiter, schema creation by
replicas starting together, surviving lost connections, and never showing the DSN."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator

import pytest

from orderwatch.core.errors import StoreError
from orderwatch.devtools.simulator import max_in_window

from conftest import PG_ADMIN, REQUIRE_POSTGRES
from harness import Proxy, until

if not REQUIRE_POSTGRES:  # without the driver skip the module; CI makes it an import error
    pytest.importorskip("psycopg")
import psycopg

from orderwatch.store.cluster_limiter import PostgresLimiter
from orderwatch.store.postgres import PostgresStore

pytestmark = pytest.mark.postgres
T0 = 1_700_000_000.0


@pytest.fixture
async def pg_store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    s = await PostgresStore.open(pg_dsn)
    yield s
    await s.close()


async def _hammer(limiter: PostgresLimiter, callers: int, until: float) -> list[float]:
    stamps: list[float] = []

    async def caller() -> None:
        while time.monotonic() < until:
            await limiter.acquire()
            stamps.append(time.monotonic())

    await asyncio.gather(*(caller() for _ in range(callers)))
    return stamps


@pytest.mark.slow
@pytest.mark.serial
async def test_three_limiters_share_one_rate(pg_dsn: str) -> None:
    """Three replicas' limiters (separate pools) hammering at 20/s: the merged sends never
    exceed 20 in any 1-second window, and together they use close to 20/s."""
    rate, seconds = 20, 3.0
    stores = [await PostgresStore.open(pg_dsn) for _ in range(3)]
    try:
        limiters = [PostgresLimiter(s.pool, rate) for s in stores]
        for lim in limiters:  # each new limiter waits out one window first (restart safety)
            await lim.acquire()
        start = time.monotonic()
        runs = [_hammer(lim, 4, start + seconds) for lim in limiters]
        per_replica = await asyncio.gather(*runs)
    finally:
        for s in stores:
            await s.close()
    merged = sorted(t for stamps in per_replica for t in stamps)
    worst = max_in_window(merged)
    achieved = len(merged) / (merged[-1] - start)
    late = sum(lim.late_slots for lim in limiters)
    print(
        f"\ncluster limiter at {rate}/s, 3 replicas x 4 callers, {seconds}s: {len(merged)} sends,"
        f" {achieved:.2f}/s, busiest 1-s window {worst}, per replica"
        f" {[len(s) for s in per_replica]}, slots given up as late {late}"
    )
    assert worst <= rate
    assert all(per_replica)  # every replica got a share
    assert achieved >= 0.85 * rate


@pytest.mark.slow
@pytest.mark.serial
async def test_late_answers_never_crowd_a_window(pg_dsn: str) -> None:
    """An answer that comes back late (a network hiccup on the way back, not a wait for the
    row lock) makes the replica place its slot late, and its send crowds the next replica's.
    Two replicas at 10/s, one behind a link that holds a third of the answers 40 ms: still
    never more than 10 sends in any 1-second window (it was 11)."""
    rate, seconds = 10, 6.0
    rng = random.Random(5)
    hiccups = Proxy(reply_delay=lambda: 0.04 if rng.random() < 0.33 else 0.0)
    await hiccups.start()
    slow_dsn = psycopg.conninfo.make_conninfo(pg_dsn, host="127.0.0.1", port=hiccups.port)
    stores = [await PostgresStore.open(slow_dsn), await PostgresStore.open(pg_dsn)]
    try:
        limiters = [PostgresLimiter(s.pool, rate) for s in stores]
        for lim in limiters:
            await lim.acquire()
        start = time.monotonic()
        per_replica = await asyncio.gather(*(_hammer(lim, 2, start + seconds) for lim in limiters))
    finally:
        for s in stores:
            await s.close()
        await hiccups.cut()
    merged = sorted(t for stamps in per_replica for t in stamps)
    print(
        f"\n{len(merged)} sends in {seconds}s, per replica {[len(s) for s in per_replica]},"
        f" busiest window {max_in_window(merged)}, given up {[x.late_slots for x in limiters]}"
    )
    assert max_in_window(merged) <= rate
    assert all(per_replica)


async def test_new_limiter_starts_one_window_after_the_last_slot(pg_store: PostgresStore) -> None:
    """A restarted replica cannot know what its predecessor sent in its last second: its
    first slot is at least one window after the last slot anyone reserved."""
    before = PostgresLimiter(pg_store.pool, 50)
    for _ in range(5):
        await before.acquire()
    last = time.monotonic()
    after = PostgresLimiter(pg_store.pool, 50)
    await after.acquire()
    assert time.monotonic() - last >= after.window_s - 0.01
    t = time.monotonic()
    await after.acquire()  # then it is evenly spaced again, no second wait
    assert time.monotonic() - t < 0.5


async def test_callers_starting_together_share_one_restart_wait(pg_store: PostgresStore) -> None:
    """A daemon's workers all call a new limiter at once: the restart wait is taken once, and
    the callers then follow one step apart (it used to be one window per caller: 4 workers,
    4 s of silence for the whole cluster at every start)."""
    await PostgresLimiter(pg_store.pool, 50).acquire()
    after = PostgresLimiter(pg_store.pool, 50)
    released: list[float] = []

    async def caller() -> None:
        await after.acquire()
        released.append(time.monotonic())

    await asyncio.gather(*(caller() for _ in range(4)))
    span = max(released) - min(released)
    assert span < after.window_s, f"4 first calls spread over {span:.2f}s"


@pytest.mark.slow
async def test_a_429_on_one_replica_holds_every_replica(pg_dsn: str) -> None:
    """One replica's 429 pause (`hold`) reaches the others through the shared limiter: their
    next send waits until the pause has passed."""
    stores = [await PostgresStore.open(pg_dsn) for _ in range(2)]
    try:
        hit, other = (PostgresLimiter(s.pool, 50) for s in stores)
        await hit.acquire()
        await other.acquire()  # both past their restart wait
        t = time.monotonic()
        await hit.hold(1.5)
        await other.acquire()
        waited = time.monotonic() - t
    finally:
        for s in stores:
            await s.close()
    assert waited >= 1.5 - 0.05, f"the other replica sent {1.5 - waited:.2f}s into the pause"


async def test_fractional_rate_spacing(pg_store: PostgresStore) -> None:
    """A fractional rate never means an extra request in a window: 2.5/s is spaced as 2/s."""
    lim = PostgresLimiter(pg_store.pool, 2.5)
    assert lim.capacity == 2 and abs(lim.step_s - 0.51) < 1e-9
    slow = PostgresLimiter(pg_store.pool, 0.5)
    assert slow.capacity == 1 and abs(slow.step_s - 2.04) < 1e-9


async def test_a_send_that_leaves_late_takes_a_new_slot(pg_store: PostgresStore) -> None:
    """A send granted its slot but held up before it leaves (a new connection, a stalled
    loop) would reach the server next to the following replica's send. Confirmed late, it
    gives up that slot and leaves at a new one, so sends stay one step apart."""
    lim = PostgresLimiter(pg_store.pool, 5)
    await lim.acquire()  # past the restart wait
    assert lim.confirm() is None  # on time: nothing to do
    left: dict[str, float] = {}

    async def late_sender() -> None:
        await lim.acquire()
        await asyncio.sleep(0.15)  # its connection took 150 ms to open
        new_slot = lim.confirm()
        assert new_slot is not None
        await new_slot
        left["late"] = time.monotonic()

    async def next_sender() -> None:
        await lim.acquire()
        assert lim.confirm() is None  # on time: nothing to do
        left["next"] = time.monotonic()

    late = asyncio.create_task(late_sender())
    await asyncio.sleep(0.01)  # the late sender holds its slot
    await asyncio.gather(late, next_sender())
    gap = abs(left["late"] - left["next"])
    assert gap >= lim.step_s - 0.02, f"two sends {gap * 1000:.0f} ms apart at 5/s"
    assert lim.confirm() is None  # confirmed already: nothing granted in this task


async def test_limiter_fails_closed_without_the_database(pg_dsn: str) -> None:
    """With the database gone the limiter raises StoreError: nothing is sent unmetered."""
    store = await PostgresStore.open(pg_dsn)
    lim = PostgresLimiter(store.pool, 100)
    await lim.acquire()
    await store.close()
    with pytest.raises(StoreError) as err:
        await lim.acquire()
    assert "postgres" in str(err.value).lower()


async def test_replicas_starting_together_create_the_schema_once(pg_dsn: str) -> None:
    """Five replicas opening a fresh database at the same moment all succeed (the advisory
    lock serialises the DDL) and the schema version is recorded."""
    stores = await asyncio.gather(*(PostgresStore.open(pg_dsn) for _ in range(5)))
    try:
        assert await stores[0].get_meta("schema_version") == "1"
        await stores[1].add_orders(["A"], T0, T0)
        assert (await stores[4].counts())["pending"] == 1
    finally:
        for s in stores:
            await s.close()


async def test_a_newer_schema_is_refused(pg_dsn: str) -> None:
    """A database migrated by a newer orderwatch is not written by an older one."""
    store = await PostgresStore.open(pg_dsn)
    await store.set_meta("schema_version", "99")
    await store.close()
    with pytest.raises(StoreError, match="upgrade orderwatch"):
        await PostgresStore.open(pg_dsn)


async def _terminate_sessions(dsn: str) -> int:
    dbname = dsn.rsplit("/", 1)[1]
    async with await psycopg.AsyncConnection.connect(PG_ADMIN, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def test_sessions_killed_by_the_server_are_replaced(pg_dsn: str) -> None:
    """After the server ends every session (pg_terminate_backend, as a failover or restart
    does), the next calls succeed on fresh connections: no call fails for it."""
    store = await PostgresStore.open(pg_dsn)
    try:
        await store.add_orders(["A", "B"], T0, T0)
        for i in range(3):
            assert await _terminate_sessions(pg_dsn) >= 1
            await asyncio.sleep(0.1)  # the server's goodbye reaches the idle socket
            assert len(await store.claim_due(T0 + 10.0 * i, 2, "w", 5)) == 2
            await store.ping()
        lim = store.shared_limiter(100)
        assert lim is not None
        await lim.acquire()
    finally:
        await store.close()


async def test_a_failed_call_is_a_store_error_and_the_next_one_works(pg_dsn: str) -> None:
    """A session killed in the middle of a statement fails that call with StoreError (the
    daemon logs it and retries later); the store keeps working."""
    store = await PostgresStore.open(pg_dsn)
    blocker = await psycopg.AsyncConnection.connect(pg_dsn)
    watch = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
    try:
        await blocker.execute("LOCK TABLE meta IN ACCESS EXCLUSIVE MODE")  # until it ends
        slow = asyncio.create_task(store.get_meta("k"))  # waits for the lock

        async def under_way() -> bool:
            cur = await watch.execute(
                "SELECT COUNT(*) FROM pg_stat_activity"
                " WHERE application_name = 'orderwatch' AND wait_event_type = 'Lock'"
            )
            row = await cur.fetchone()
            return row is not None and row[0] == 1

        await until(under_way, timeout=10)
        await _terminate_sessions(pg_dsn)  # the blocker's too
        with pytest.raises(StoreError):
            await slow
        await store.ping()
    finally:
        await blocker.close()
        await watch.close()
        await store.close()


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://orderwatch:s3cr3t-pw@127.0.0.1:1/orderwatch",  # nothing listens
        "host=127.0.0.1 port=1 password=s3cr3t-pw user",  # malformed key/value DSN
        "postgresql://orderwatch:s3cr3t-pw@127.0.0.1:1/orderwatch?sslmode=bogus",
    ],
)
async def test_the_dsn_never_appears_in_errors(dsn: str) -> None:
    """Connection failures and malformed DSNs become one StoreError without the password."""
    with pytest.raises(StoreError) as err:
        await PostgresStore.open(dsn)
    assert "s3cr3t" not in str(err.value)
    assert "s3cr3t" not in repr(err.value.__cause__) and err.value.__suppress_context__


@pytest.mark.slow
async def test_the_store_is_back_soon_after_a_long_outage(pg_dsn: str) -> None:
    """The pool retried a lost server at 1, 2, 4, 8, 16, 32 s... with no cap, so after an
    outage of a minute or two the daemon sat idle for another minute once the database was
    back (81 s after 152 s, in the audit). Each retry chain now gives up after a few
    seconds and the next store call starts a fresh one."""
    from urllib.parse import urlsplit

    url = urlsplit(pg_dsn)
    outage = Proxy(url.port or 5432)
    await outage.start()
    store = await PostgresStore.open(
        pg_dsn.replace(url.netloc, f"postgres@127.0.0.1:{outage.port}")
    )
    try:
        await store.counts()
        await outage.cut()
        loop = asyncio.get_running_loop()
        end = loop.time() + 35.0
        while loop.time() < end:  # the daemon keeps asking, as its loops do
            with contextlib.suppress(StoreError):
                await store.counts()
            await asyncio.sleep(1.0)
        await outage.restore()
        back = loop.time()
        while True:
            try:
                await store.counts()
                break
            except StoreError:
                await asyncio.sleep(0.2)
        idle = loop.time() - back
    finally:
        await store.close()
        await outage.cut()
    print(f"\nafter a 35 s outage the store answered {idle:.1f}s after the database was back")
    assert idle < 8.0, f"the store answered {idle:.1f}s after the database was back"


async def test_a_failed_write_is_named_as_the_write_it_was(pg_dsn: str) -> None:
    """Errors say which call failed: a claim refused by a read-only database was reported as
    "read: ... cannot execute UPDATE" (PostgreSQL audit), which sends an operator looking at
    the wrong thing."""
    store = await PostgresStore.open(pg_dsn)
    try:
        await store.add_orders(["A"], T0, T0)
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            name = pg_dsn.rsplit("/", 1)[1]
            admin.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        errors: dict[str, str] = {}
        for _ in range(20):  # the pool replaces the sessions it lost, now read-only
            for what, call in (
                ("claim", store.claim_due(T0, 1, "w", 30)),
                ("add", store.add_orders(["B"], T0, T0)),
            ):
                try:
                    await call
                except StoreError as e:
                    errors[what] = str(e)
            if all("ReadOnly" in e for e in errors.values()) and len(errors) == 2:
                break
            await asyncio.sleep(0.1)
    finally:
        await store.close()
    assert "claim orders: ReadOnlySqlTransaction" in errors["claim"]
    assert "add orders: ReadOnlySqlTransaction" in errors["add"]
