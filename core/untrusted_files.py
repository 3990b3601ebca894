"""Opening files of a workspace that may be someone else's: any path may be a symlink, a FIFO or huge.

Two ways in, one owner:

* ``open_regular`` reads an input file (a shard, a score table, an eval file). It follows a symlink
  (a pool may live on another disk) but refuses anything that is not a regular file once opened: a FIFO
  is opened non-blocking, so it can never hang the reader, and then refused in one line.
* ``open_no_follow`` opens a file poolsieve writes into (a lock file, a record): a symlink in its place
  is refused, never followed, so a planted link cannot make poolsieve write through it.

``regular_file_size`` checks a path the same way and returns its size, for callers that hand the path
to a library that opens it itself.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO

from .errors import InputError

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symlink"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _refuse(path: str | Path, mode: int) -> InputError:
    return InputError(path, f"is {_kind(mode)}, not a regular file; poolsieve reads and writes only regular files here")


def _checked(fd: int, path: str | Path) -> int:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _refuse(path, st.st_mode)
    return fd


def open_regular_fd(path: str | Path) -> int:
    """A read-only, blocking file descriptor of ``path``, a regular file (symlinks followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(path, "does not exist") from None
    fd = _checked(fd, path)
    os.set_blocking(fd, True)
    return fd


def open_regular(path: str | Path) -> IO[bytes]:
    """``path`` opened for binary reading; ``InputError`` in one line unless it is a regular file."""
    return os.fdopen(open_regular_fd(path), "rb")


def regular_file_size(path: str | Path) -> int:
    """The size of ``path`` after checking it is a regular file (symlinks followed); never blocks."""
    fd = open_regular_fd(path)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def open_no_follow(path: str | Path, flags: int = os.O_RDWR | os.O_CREAT, mode: int = 0o666) -> int:
    """A file descriptor of ``path`` opened without following a symlink in its place; refuses
    a symlink, FIFO or folder there in one line (``InputError``)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as e:
        try:
            st = os.lstat(path)
        except OSError:
            raise e from None
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(path, st.st_mode) from None
        raise
    fd = _checked(fd, path)
    os.set_blocking(fd, True)
    return fd
