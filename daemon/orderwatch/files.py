"""Reading the files a user names (config, secrets, watchlists): regular files only, since a
FIFO or a device would block the reader (and a reload reads on the event loop), and never more
than a cap."""

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
