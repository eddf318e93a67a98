"""Final payload files: atomic, 0600, never through a temp file another writer owns, and\nholding what the committed event holds even when a writer whose lease ran out comes late."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest
import structlog

from orderwatch.core.errors import OrderwatchError, StoreError
from orderwatch.delivery.payload_files import (
    TMP_PREFIX,
    TMP_STALE_S,
    prepare_output_dir,
    write_payload,
)
from orderwatch.devtools.simulator import SimOptions, running_simulator
from orderwatch.polling.client import RunaClient
from orderwatch.polling.scheduler import Poller
from orderwatch.store.base import Claim
from orderwatch.store.lock import prepare_state_dir
from orderwatch.store.sqlite import SqliteStore

from harness import API_KEY, FakeClock, one_worker, settings_for


def test_a_temp_file_of_another_writer_is_left_alone(tmp_path: Path) -> None:
    """Replicas that share output_dir may share a pid (1 in containers): a write must not
    truncate and rename what another writer of the same order has half written."""
    prepare_output_dir(tmp_path)
    theirs = tmp_path / f"{TMP_PREFIX}O-P1.{os.getpid()}"
    theirs.write_bytes(b'{"half": ')
    final = write_payload(tmp_path, "O-P1", b'{"id": "O-P1"}')
    assert final.read_bytes() == b'{"id": "O-P1"}'
    assert stat.S_IMODE(final.stat().st_mode) == 0o600
    assert theirs.read_bytes() == b'{"half": '
    assert sorted(p.name for p in tmp_path.iterdir()) == [theirs.name, "O-P1.json"]


def _client(base_url: str) -> RunaClient:
    return RunaClient(base_url, API_KEY, api_version="2024-02-05", timeout_s=2, max_connections=1)


async def _a_stalls_then_b_claims(
    store: SqliteStore, a: Poller, a_writing: threading.Event, wall: FakeClock
) -> tuple[asyncio.Task[None], Claim]:
    """Worker A claims O-RACE and polls it until its payload write stalls (the test's gated
    write_payload sets `a_writing`, in the thread that writes); then 61 s pass, A's lease
    runs out and B claims the order. Returns A's task and B's claim."""
    await store.add_orders(["O-RACE"], wall(), wall())
    (claim_a,) = await store.claim_due(wall(), 1, "a", 60.0)
    task_a = asyncio.create_task(a.poll_one(claim_a))
    assert await asyncio.to_thread(a_writing.wait, 10)
    wall.now += 61.0
    (claim_b,) = await store.claim_due(wall(), 1, "b", 60.0)
    return task_a, claim_b


async def _stale_writer_race(
    tmp_path: Path, holder_commits_first: bool
) -> tuple[object, object, tuple[object, object]]:
    """Worker A gets the final body, checks its lease and stalls while it writes; its lease
    runs out and worker B (another replica) polls the order again, with a later body (a payout
    status can change between GETs), writes it and commits. A's rename lands after B's.
    Returns (A's body, B's body, and what the file and the event hold)."""
    wall = FakeClock()
    store = await SqliteStore.open(tmp_path / "state", daemon=True, now=wall())
    out = tmp_path / "orders"
    prepare_output_dir(out)
    a_may_write, b_wrote, b_may_commit = threading.Event(), threading.Event(), threading.Event()
    a_writing = threading.Event()
    calls: list[bytes] = []

    def gated(output_dir: Path, order_id: str, body: bytes) -> Path:
        calls.append(body)
        if len(calls) == 1:  # A: stalled (a long fsync, a paused VM) past its lease
            a_writing.set()
            a_may_write.wait(10)
            return write_payload(output_dir, order_id, body)
        path = write_payload(output_dir, order_id, body)
        b_wrote.set()
        if not holder_commits_first:
            b_may_commit.wait(10)
        return path

    opts = SimOptions(api_key=API_KEY, complete_after=0)
    settings = settings_for(tmp_path, "http://127.0.0.1:9/v2")

    def poller(client: RunaClient, owner: str) -> Poller:
        return one_worker(
            store,
            client,
            polling=settings.polling,
            output_dir=out,
            wall=wall,
            owner=owner,
            write_payload=gated,
        )

    async with (
        running_simulator(opts) as one,
        running_simulator(opts) as two,
        _client(one.base_url) as ca,
        _client(two.base_url) as cb,
    ):
        task_a, claim_b = await _a_stalls_then_b_claims(store, poller(ca, "a"), a_writing, wall)
        task_b = asyncio.create_task(poller(cb, "b").poll_one(claim_b))
        await asyncio.to_thread(b_wrote.wait, 10)
        if holder_commits_first:
            await task_b
        a_may_write.set()
        await task_a  # A's rename lands over B's file; A's commit is refused
        b_may_commit.set()
        await task_b
        event = await store.get_event("O-RACE")
        await store.close()
        assert event is not None
        on_disk = json.loads((out / "O-RACE.json").read_bytes())
        committed = json.loads(event.body)["data"]
        return one.sim.payload("O-RACE"), two.sim.payload("O-RACE"), (on_disk, committed)


@pytest.mark.parametrize("holder_commits_first", [True, False])
async def test_a_stale_writer_never_leaves_its_body_over_the_committed_one(
    tmp_path: Path, holder_commits_first: bool
) -> None:
    """Whoever commits the event owns the file's content: the stale writer puts the committed
    payload back when its own commit is refused after the holder's, and the holder checks
    its file after committing (for a stale rename that came between its write and commit)."""
    stale, holder, (on_disk, committed) = await _stale_writer_race(tmp_path, holder_commits_first)
    assert stale != holder  # the two GETs saw different bodies (other payout links)
    assert committed == holder
    assert on_disk == committed


async def test_a_stale_writer_leaves_no_file_for_an_order_that_ended_without_one(
    tmp_path: Path,
) -> None:
    """A worker whose lease ran out while it wrote the payload renames its file after the
    new holder ended the order EXPIRED; its own commit is refused. There was no committed
    payload to put back, so the file, payout links and all, stayed beside an order that
    SPEC says has none. The refused writer now removes it."""
    wall = FakeClock()
    store = await SqliteStore.open(tmp_path / "state", daemon=True, now=wall())
    out = tmp_path / "orders"
    prepare_output_dir(out)
    a_may_write, a_writing = threading.Event(), threading.Event()
    calls: list[bytes] = []

    def gated(output_dir: Path, order_id: str, body: bytes) -> Path:
        calls.append(body)
        a_writing.set()
        a_may_write.wait(10)  # A stalls past its lease
        return write_payload(output_dir, order_id, body)

    settings = settings_for(tmp_path, "http://127.0.0.1:9/v2", polling={"give_up_after": "30s"})

    def poller(client: RunaClient, owner: str) -> Poller:
        return one_worker(
            store,
            client,
            polling=settings.polling,
            output_dir=out,
            wall=wall,
            owner=owner,
            write_payload=gated,
        )

    async with (
        running_simulator(SimOptions(api_key=API_KEY, complete_after=0)) as one,
        running_simulator(SimOptions(api_key=API_KEY, complete_after=1e9)) as two,
        _client(one.base_url) as ca,
        _client(two.base_url) as cb,
    ):
        # A's lease runs out, and give_up_after (30 s) passes with it
        task_a, claim_b = await _a_stalls_then_b_claims(store, poller(ca, "a"), a_writing, wall)
        await poller(cb, "b").poll_one(claim_b)  # still PROCESSING past the deadline: expired
        a_may_write.set()
        await task_a  # A's rename lands; its commit is refused
        (row,) = await store.get_orders(["O-RACE"])
    await store.close()
    assert row.state == "expired"
    assert not (out / "O-RACE.json").exists()


def test_a_failed_rename_leaves_no_temp_copy(tmp_path: Path) -> None:
    """When the rename fails (here <ID>.json is a directory; a full disk does the same), the
    temp copy, payout links and all, is removed: each retry used to leave one more."""
    prepare_output_dir(tmp_path)
    (tmp_path / "O-P2.json").mkdir()
    for _ in range(3):
        with pytest.raises(OSError):
            write_payload(tmp_path, "O-P2", b'{"id": "O-P2"}')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["O-P2.json"]


def test_directories_others_could_write_are_tightened_or_refused(tmp_path: Path) -> None:
    """An existing output_dir others could list or write was left as it was (state_dir was
    tightened): another local user could swap a finished payload for one with their own
    payout links. Ours are tightened to 0700; a shared sticky directory such as /tmp is not
    ours to tighten (as root, chmod would have broken it for everyone) and is refused."""
    for prepare, error in ((prepare_output_dir, OrderwatchError), (prepare_state_dir, StoreError)):
        loose = tmp_path / f"loose-{prepare.__name__}"
        loose.mkdir()
        loose.chmod(0o777)
        prepare(loose)
        assert stat.S_IMODE(loose.stat().st_mode) == 0o700
        shared = tmp_path / f"sticky-{prepare.__name__}"
        shared.mkdir()
        shared.chmod(0o1777)
        with pytest.raises(error, match="writable by other users"):
            prepare(shared)
        assert stat.S_IMODE(shared.stat().st_mode) == 0o1777


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory of another user")
def test_a_directory_of_another_user_is_used_only_if_others_cannot_write(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    theirs.chmod(0o755)  # listable, files 0600: only the order ids show, as before
    prepare_output_dir(theirs)
    assert stat.S_IMODE(theirs.stat().st_mode) == 0o755
    theirs.chmod(0o777)
    with pytest.raises(OrderwatchError, match="writable by other users"):
        prepare_output_dir(theirs)
    theirs.chmod(0o2775)  # group-writable: refused for another group, used for ours (fsGroup)
    with pytest.raises(OrderwatchError, match="writable by other users"):
        prepare_output_dir(theirs)
    os.chown(theirs, 65534, os.getegid())
    theirs.chmod(0o2775)  # chown clears setgid
    prepare_output_dir(theirs)
    assert stat.S_IMODE(theirs.stat().st_mode) == 0o2775


def test_a_shared_output_dir_keeps_the_temp_files_of_live_writers(tmp_path: Path) -> None:
    """Replicas share output_dir: one that starts removed every temp file, a live replica's
    half-written payload among them, whose rename then failed. With `shared`, only temp files
    older than TMP_STALE_S (a crash's) go; alone, every one is a crash's and goes."""
    fresh, old = tmp_path / f"{TMP_PREFIX}O-1.1.a", tmp_path / f"{TMP_PREFIX}O-2.1.b"
    for f in (fresh, old):
        f.write_bytes(b"{")
    os.utime(old, (time.time() - TMP_STALE_S - 1,) * 2)
    prepare_output_dir(tmp_path, shared=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [fresh.name]
    prepare_output_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_only_regular_temp_files_of_ours_are_removed_at_start(tmp_path: Path) -> None:
    """A directory named `.tmp-...` in output_dir stopped the start ("Is a directory", exit
    1): every name that matched was unlinked. Only our own regular files go now; a
    directory, a symlink (and its target), a FIFO and another user's file stay, logged once."""
    out, outside = tmp_path / "orders", tmp_path / "outside"
    out.mkdir(mode=0o700)
    outside.write_bytes(b"keep")
    ours = out / f"{TMP_PREFIX}O-1.1.a"
    ours.write_bytes(b"{")
    (out / f"{TMP_PREFIX}dir").mkdir()
    (out / f"{TMP_PREFIX}dir" / "inside").write_bytes(b"x")
    (out / f"{TMP_PREFIX}link").symlink_to(outside)
    os.mkfifo(out / f"{TMP_PREFIX}fifo")
    kept = {f"{TMP_PREFIX}dir", f"{TMP_PREFIX}link", f"{TMP_PREFIX}fifo"}
    if os.geteuid() == 0:  # root can make a file of another user
        theirs = out / f"{TMP_PREFIX}O-2.1.b"
        theirs.write_bytes(b"{")
        os.chown(theirs, 65534, 65534)
        kept.add(theirs.name)
    with structlog.testing.capture_logs() as logs:
        prepare_output_dir(out)
    assert {p.name for p in out.iterdir()} == kept
    assert outside.read_bytes() == b"keep"
    assert (out / f"{TMP_PREFIX}dir" / "inside").read_bytes() == b"x"
    (line,) = [e for e in logs if e["log_level"] == "warning"]
    assert line["event"] == "payload.leftovers_kept" and line["count"] == len(kept)
