"""Final payload files: `<output_dir>/<ORDER_ID>.json`, atomic, 0600, never partial."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from pathlib import Path

import structlog

from orderwatch.core.errors import OrderwatchError
from orderwatch.core.files import open_regular, private_dir
from orderwatch.core.ids import is_valid_order_id

log = structlog.get_logger("orderwatch.payloads")

TMP_PREFIX = ".tmp-"
TMP_STALE_S = 600.0  # a temp file this old in a shared output_dir is a crash's, not a writer's


def prepare_output_dir(output_dir: Path, *, shared: bool = False) -> None:
    """Create output_dir 0700 (or tighten ours, see `private_dir`) and remove the temp files a
    crash left behind (regular files of ours only; anything else is logged and left).
    `shared` (replicas writing the same directory): only those older than
    TMP_STALE_S, since a younger one may be a live replica's write in progress."""
    try:
        private_dir(output_dir)
        if not os.access(output_dir, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        stale_before, kept = time.time() - TMP_STALE_S, 0
        for leftover in output_dir.glob(f"{TMP_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                st = leftover.lstat()
                if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                    kept += 1  # a directory, a link, another user's file: none we wrote
                elif not shared or st.st_mtime < stale_before:
                    leftover.unlink()
        if kept:
            log.warning(
                "payload.leftovers_kept",
                output_dir=str(output_dir),
                count=kept,
                reason=f"{TMP_PREFIX}* entries that are not regular files of ours",
            )
    except OSError as e:
        raise OrderwatchError(f"output_dir {output_dir}: {e.strerror or e}") from None


def write_payload(output_dir: Path, order_id: str, body: bytes) -> Path:
    """Write body to <order_id>.json: temp file in the same dir, fsync, rename, fsync dir."""
    if not is_valid_order_id(order_id):  # defence in depth: callers validated already
        raise ValueError("refusing to write a file for an invalid order id")
    final = output_dir / f"{order_id}.json"
    # A name of its own: replicas sharing output_dir can share a pid (1, in containers), and
    # a worker whose lease ran out may write the same order as the one that holds it now.
    tmp = output_dir / f"{TMP_PREFIX}{order_id}.{os.getpid()}.{os.urandom(6).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # a failed rename too: no copy of the payload left behind
        raise
    _sync_dir(output_dir)
    return final


def remove_payload(output_dir: Path, order_id: str) -> bool:
    """Remove <order_id>.json if it is there; True when it was. For an order that ends without
    a payload (expired, not found): a file there is from a final attempt killed before its
    commit, and must not outlive the event that says otherwise."""
    if not is_valid_order_id(order_id):
        raise ValueError("refusing to remove a file for an invalid order id")
    try:
        (output_dir / f"{order_id}.json").unlink()
    except FileNotFoundError:
        return False
    _sync_dir(output_dir)
    return True


def _sync_dir(output_dir: Path) -> None:
    """fsync the directory: a rename or unlink in it survives a power loss."""
    dir_fd = os.open(output_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def restore_payload(output_dir: Path, order_id: str, body: bytes) -> bool:
    """Called once `body` is the committed payload: put it back if <order_id>.json holds other
    content, which only a writer whose lease ran out can have put there (it checked its lease,
    then stalled before its rename). A missing file stays missing: its consumer may have moved
    it. True when the file was rewritten."""
    try:
        with open_regular(output_dir / f"{order_id}.json") as f:
            held = f.read()
    except FileNotFoundError:
        return False
    if held == body or _json(held) == _json(body):
        return False
    write_payload(output_dir, order_id, body)
    return True


def _json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return raw
