"""Removing or replacing a folder only when poolsieve wrote it (``--overwrite``, a rerun, ``submit --out``).

A workspace may come from someone else, and a path the user types may name any folder, so before a
command removes or replaces a folder it checks that the folder is poolsieve's own:

* it is a real folder, not a symlink (a planted ``runs/x -> ~`` is never followed into);
* it lies inside ``inside`` (the workspace) when the command chose the place itself: its real path,
  parent symlinks resolved, is below that folder and is not that folder;
* it holds the stage's record, one of ``records`` (``train_config.json``, ``submission.json``, ...), as a
  regular file; an empty folder holds nothing to lose and passes too.

Anything else is refused in one line (``PoolsieveError``) naming the folder and what is missing; nothing
is removed. ``shutil.rmtree`` then removes the folder without following symlinks inside it.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .errors import PoolsieveError


def _refuse(folder: Path, why: str, what: str) -> PoolsieveError:
    return PoolsieveError(f"{folder}: {why}; poolsieve removes or replaces only a {what} it wrote; "
                          f"move it away or choose another {what}")


def _holds_record(folder: Path, records: Sequence[str]) -> bool:
    for name in records:
        try:
            if stat.S_ISREG(os.lstat(folder / name).st_mode):
                return True
        except OSError:
            continue
    return False


def check_owned(folder: str | Path, records: Sequence[str], *, inside: str | Path | None = None,
                what: str = "folder") -> bool:
    """Whether ``folder`` exists; ``PoolsieveError`` in one line when it does and is not poolsieve's
    (a symlink, not a folder, outside ``inside``, or without one of ``records`` and not empty)."""
    folder = Path(folder)
    try:
        mode = os.lstat(folder).st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there (a file in its parent's place: nothing either)
        return False
    if stat.S_ISLNK(mode):
        raise _refuse(folder, "is a symlink", what)
    if not stat.S_ISDIR(mode):
        raise _refuse(folder, "is not a folder", what)
    if inside is not None:
        real, base = folder.parent.resolve() / folder.name, Path(inside).resolve()
        if real == base or not real.is_relative_to(base):
            raise _refuse(folder, f"lies outside {base}", what)
    if _holds_record(folder, records):
        return True
    with os.scandir(folder) as entries:
        if next(entries, None) is None:
            return True
    raise _refuse(folder, f"holds no {' or '.join(records)}", what)


def remove_owned(folder: str | Path, records: Sequence[str], *, inside: str | Path | None = None,
                 what: str = "folder") -> bool:
    """Remove ``folder`` after ``check_owned``; whether there was one to remove."""
    if not check_owned(folder, records, inside=inside, what=what):
        return False
    shutil.rmtree(folder)
    return True


def replace_owned(staging: str | Path, folder: str | Path, records: Sequence[str], *,
                  inside: str | Path | None = None, what: str = "folder") -> None:
    """Put the finished folder ``staging`` in ``folder``'s place (a sibling of it). A folder already
    there must pass ``check_owned``; it is moved aside first and removed once ``staging`` is in place,
    so a run killed in between leaves the old folder or the new one under the final name, never a mix."""
    staging, folder = Path(staging), Path(folder)
    if not check_owned(folder, records, inside=inside, what=what):
        os.replace(staging, folder)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
    os.replace(folder, aside / folder.name)
    os.replace(staging, folder)
    shutil.rmtree(aside)
