"""Errors that poolsieve reports to the user as one line and a non-zero exit code."""

from __future__ import annotations

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
