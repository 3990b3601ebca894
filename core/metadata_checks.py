"""Checks on pool metadata as it enters the workspace (``download``, ``score --import-datacomp``).

Every file must have the CommonPool columns with usable types: ``uid`` a string of 32 lowercase hex
characters, ``url`` and ``text`` strings (a binary caption would be lost by img2dataset's writer). Each
uid appears once in the whole pool: a repeat is refused in one line naming the file and both rows, or,
when the user asks (``--drop-duplicate-uids``), every repeat after the first is dropped, from the
parquet and from its row-aligned ``.npz`` alike, and counted. Bad input raises ``InputError``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import InputError
from .formats import METADATA_REQUIRED, atomic_path, check_metadata_columns
from .uids import KEY_DTYPE, find_duplicates, hex_to_keys, keys_to_hex

TEXT_COLUMNS = ("url", "text")


@dataclass
class MetadataScan:
    """What ``scan_metadata`` found: the files and, per file, the rows that repeat an earlier uid."""

    files: list[Path]
    repeats: list[np.ndarray]  # per file, sorted local row numbers
    first_repeat: tuple[Path, str] | None = None  # (file, problem) of the first repeated uid

    @property
    def repeated_rows(self) -> int:
        return int(sum(len(r) for r in self.repeats))

    def refuse_duplicates(self) -> None:
        """Raise one line naming the file and rows of the first repeated uid, if any."""
        if self.first_repeat is not None:
            path, problem = self.first_repeat
            raise InputError(path, f"{problem} ({self.repeated_rows} repeated row(s) in all; "
                                   "--drop-duplicate-uids keeps the first of each)")

    def drop_repeats(self, folder: Path | None = None) -> int:
        """Rewrite each file (the same name in ``folder`` if given) without its repeated rows, and its
        ``.npz`` the same way. Returns the number of rows dropped. Files are replaced, never edited in
        place, so a hard-linked source (a hub cache) is left as it was."""
        for path, rows in zip(self.files, self.repeats, strict=True):
            if not len(rows):
                continue
            target = (folder / path.name) if folder is not None else path
            table = pq.read_table(target)
            keep = np.ones(table.num_rows, dtype=bool)
            keep[rows] = False
            with atomic_path(target) as tmp:
                pq.write_table(table.filter(pa.array(keep)), tmp)
            npz = target.with_suffix(".npz")
            if npz.exists():
                with np.load(npz, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
                bad = [k for k, v in arrays.items() if len(v) != len(keep)]
                if bad:
                    raise InputError(npz, f"{bad[0]} has {len(arrays[bad[0]])} rows but {target.name} has "
                                          f"{len(keep)}: misaligned")
                with atomic_path(npz) as tmp, open(tmp, "wb") as f:
                    np.savez(f, **{k: v[keep] for k, v in arrays.items()})
        dropped = self.repeated_rows
        if dropped:
            print(f"metadata: dropped {dropped} row(s) whose uid repeats an earlier row "
                  f"(--drop-duplicate-uids)", file=sys.stderr, flush=True)
        return dropped


def _is_text(t) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)


def scan_metadata(files: Sequence[Path], required: Sequence[str] = METADATA_REQUIRED) -> MetadataScan:
    """Check columns, column types and uids of ``files`` (in order) and find repeated uids."""
    all_keys, sizes = [], []
    for path in files:
        try:
            schema = pq.read_schema(path)
            check_metadata_columns(path, schema.names, required)
            for name in TEXT_COLUMNS:
                if name in schema.names and not _is_text(schema.field(name).type):
                    raise InputError(path, f"column {name} has type {schema.field(name).type}; it must hold "
                                           "UTF-8 strings (decode it first, e.g. pandas .str.decode('utf-8'))")
            column = pq.read_table(path, columns=["uid"]).column("uid")
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - an unreadable file is bad input
            raise InputError(path, f"not a readable parquet file ({e})") from None
        keys = hex_to_keys(column, source=path)
        all_keys.append(keys)
        sizes.append(len(keys))
    offsets = np.cumsum([0, *sizes])
    repeats_at, firsts_at = find_duplicates(np.concatenate(all_keys) if all_keys else np.zeros(0, KEY_DTYPE))
    per_file = [repeats_at[(repeats_at >= lo) & (repeats_at < hi)] - lo
                for lo, hi in zip(offsets[:-1], offsets[1:], strict=True)]
    first = None
    if len(repeats_at):
        r, f = int(repeats_at[0]), int(firsts_at[0])
        ri, fi = int(np.searchsorted(offsets, r, "right") - 1), int(np.searchsorted(offsets, f, "right") - 1)
        uid = keys_to_hex(all_keys[ri][r - offsets[ri]:r - offsets[ri] + 1])[0]
        where = f"row {f - offsets[fi]}" + ("" if fi == ri else f" of {files[fi]}")
        first = (files[ri], f"uid {uid} at row {r - offsets[ri]} repeats {where}")
    return MetadataScan(list(files), per_file, first)


def check_metadata(files: Sequence[Path], *, drop_duplicate_uids: bool = False,
                   folder: Path | None = None, required: Sequence[str] = METADATA_REQUIRED) -> MetadataScan:
    """``scan_metadata``, then refuse repeated uids, or drop them (rewriting the files, or their
    namesakes in ``folder``) when ``drop_duplicate_uids``."""
    scan = scan_metadata(files, required)
    if drop_duplicate_uids:
        scan.drop_repeats(folder)
    else:
        scan.refuse_duplicates()
    return scan
