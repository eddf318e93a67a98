"""Reading the files a user names (config, secrets, watchlists): regular files only, since a
FIFO or a device would block the reader (and a reload reads on the event loop), and never more
than a cap. And the directories that hold payout links: private to us."""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path


def open_regular(path: Path) -> io.BufferedReader:
    """Open for reading; OSError for what is not a regular file, without blocking on it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(mode):
            raise OSError(0, "not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_capped(path: Path, cap: int) -> bytes:
    """The file's first cap + 1 bytes at most: more than cap means it is too large."""
    with open_regular(path) as f:
        return f.read(cap + 1)


def private_dir(path: Path) -> None:
    """Create `path` 0700, or tighten an existing one of ours. One that is not ours to tighten
    (another owner's, or a shared sticky directory like /tmp, which chmod would break for
    everyone when run as root) is used as it is unless users outside our groups can write it:
    they could replace what we write there. A volume's root that our own group may write (a
    Kubernetes fsGroup) is fine."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if not st.st_mode & 0o077:
        return
    if st.st_uid == os.geteuid() and not st.st_mode & stat.S_ISVTX:
        os.chmod(path, 0o700)
        return
    ours = st.st_gid == os.getegid() or st.st_gid in os.getgroups()
    if st.st_mode & 0o002 or (st.st_mode & 0o020 and not ours):
        raise PermissionError(
            errno.EPERM,
            f"writable by other users (mode {stat.S_IMODE(st.st_mode):o}) and not ours to"
            " tighten: name a directory below it, which orderwatch creates 0700",
        )
