"""The one writer's lock: a stage holds it for every workspace folder (or subset name) it writes.

The lock of ``<parent>/<name>`` is ``fcntl.flock`` on the hidden sibling ``<parent>/.<name>.lock``, which
holds the holder's pid and host. A second writer fails at once with one line naming the folder and the
holder (or waits up to ``wait`` seconds first). The kernel drops the lock when the holder's process ends,
however it ends, so a killed run never leaves a stale lock; the file itself stays (removing it would
let two processes lock two different files). Works on local disks and on NFSv4.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import PoolsieveError
from .untrusted_files import open_no_follow


def lock_path(target: str | Path) -> Path:
    """The lock file of ``target``: ``<parent>/.<name>.lock``."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def exclusive(target: str | Path, wait: float = 0.0) -> Iterator[Path]:
    """Hold ``target``'s writer's lock for the block; raise ``PoolsieveError`` if another process holds it.

    ``wait``: seconds to wait for the other writer before giving up (0: give up at once).
    """
    target = Path(target)
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_no_follow(path)  # a symlink planted in its place is refused, never written through
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise PoolsieveError(f"{target}: another poolsieve process{_holder(fd)} is writing it; "
                                         "wait for it to finish (or stop it) and rerun") from None
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except OSError as e:  # no space for the holder's line: the error names the lock file
            raise OSError(e.errno, e.strerror, str(path)) from None
        yield path
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """`` (pid N on HOST)`` from the lock file, or nothing when it cannot be read."""
    try:
        pid, _, host = os.pread(fd, 300, 0).decode("utf-8", "replace").strip().partition(" ")
    except OSError:
        return ""
    if not pid.isdigit():
        return ""
    return f" (pid {pid} on {host})" if host and host != socket.gethostname() else f" (pid {pid})"
