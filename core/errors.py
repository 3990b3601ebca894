"""Errors that poolsieve reports to the user as one line and a non-zero exit code."""

from __future__ import annotations

import errno
from pathlib import Path


class PoolsieveError(Exception):
    """A problem the user can fix: bad input, bad config, missing files.

    The CLI prints ``str(error)`` on one line and exits with code 2. Name the file and what is
    wrong with it; never include a traceback.
    """


class InputError(PoolsieveError):
    """Bad input data: a file that is missing, malformed or inconsistent."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)

    def __reduce__(self):  # keep (path, problem) across processes (Ray tasks, subprocesses)
        return (type(self), (self.path, self.problem))


class ConfigError(PoolsieveError):
    """A config file or option that cannot be used."""


class PoolsieveWarning(UserWarning):
    """A result that is usable but short of what was asked (the CLI prints it on one line)."""


# OSErrors the user's machine causes, not poolsieve: reported like a PoolsieveError (one line, exit 2).
_USER_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EMFILE: "too many open files (raise `ulimit -n`)",
    errno.ENAMETOOLONG: "file name too long",
}


def user_os_error(error: BaseException) -> str | None:
    """One line for an ``OSError`` the user's machine caused (no space, read-only, permission), naming the
    path and what to do; ``None`` for any other error (a bug, which keeps its traceback)."""
    if not isinstance(error, OSError) or error.errno not in _USER_ERRNOS:
        return None
    where = error.filename if error.filename is not None else "a file"
    if error.filename2 is not None:
        where = f"{where} -> {error.filename2}"
    return f"{where}: {_USER_ERRNOS[error.errno]} [errno {error.errno}]; free space or fix permissions and rerun " \
           "(whole units already written are kept)"
