"""Reshard's pass 2: one output shard written from the members' raw bytes in the pool tars (a Ray task).

Every member gets a new name ``{uid}-{j}.{kind}`` (DataComp's naming); all headers of the shard are
made at once (``core.tar_io.ustar_headers``). A large member's data (an image) is copied from pool tar
to output inside the kernel (``copy_range``: ``copy_file_range``, no pass through Python); the small
members of a sample (caption, json) are read with one ``pread`` and go out with the headers in one
``writev`` per sample. The shard is written under a temporary name and renamed when whole.
"""

from __future__ import annotations

import os

import numpy as np

from poolsieve.core.errors import InputError
from poolsieve.core.formats import atomic_path, write_json
from poolsieve.core.tar_io import BLOCK, END_OF_ARCHIVE, copy_range, padding, ustar_headers, write_buffers
from poolsieve.core.uids import keys_to_hex
from poolsieve.core.untrusted_files import open_regular_fd
from poolsieve.pipeline.reshard.plan import WriteUnit
from poolsieve.pipeline.reshard.scan import KINDS

COPY_MIN = 16 << 10  # members this large are copied by the kernel; smaller ones pass through a pread
FLUSH_BYTES = 8 << 20  # small members are written out at least this often
_IOV_MAX = 1024


def member_names(unit: WriteUnit) -> list[str]:
    """``{uid}-{j}.{kind}`` of every member of the unit, in order."""
    keys = [f"{u}-{j}" for u, j in zip(keys_to_hex(unit.uids), unit.copy_number.tolist(), strict=True)]
    copy_of_member = np.repeat(np.arange(len(keys)), unit.member_count).tolist()
    return [f"{keys[c]}.{KINDS[k]}" for c, k in zip(copy_of_member, unit.member_kind.tolist(), strict=True)]


def _small_spans(unit: WriteUnit, large: np.ndarray) -> tuple[list[int], list[int]]:
    """Per copy, the byte range of the source tar that holds its small members (empty when it has none)."""
    starts = np.cumsum(unit.member_count) - unit.member_count
    ends = unit.member_offset + unit.member_size
    lo = np.minimum.reduceat(np.where(large, np.iinfo(np.int64).max, unit.member_offset), starts)
    hi = np.maximum.reduceat(np.where(large, -1, ends), starts)
    none = hi < 0
    lo[none], hi[none] = 0, 0
    return lo.tolist(), hi.tolist()


def _copy_members(out_fd: int, unit: WriteUnit, fds: list[int | None]) -> int:
    """Write every member of ``unit`` (header, data, padding) to ``out_fd``; return the bytes written."""
    headers = memoryview(ustar_headers(member_names(unit), unit.member_size)).cast("B")
    sizes, offsets = unit.member_size.tolist(), unit.member_offset.tolist()
    large_arr = unit.member_size >= COPY_MIN
    large = large_arr.tolist()
    span_lo, span_hi = _small_spans(unit, large_arr)
    pieces: list = []
    written = pending = m = 0
    for c, (s, count) in enumerate(zip(unit.source.tolist(), unit.member_count.tolist(), strict=True)):
        fd = fds[s]
        if fd is None:
            fd = fds[s] = open_regular_fd(unit.sources[s])
        lo, hi = span_lo[c], span_hi[c]
        if hi > lo:
            small = memoryview(os.pread(fd, hi - lo, lo))
            if len(small) != hi - lo:
                raise InputError(unit.sources[s], f"shrank while resharding: cannot read bytes {lo}-{hi}")
        for k in range(m, m + count):
            size = sizes[k]
            pieces.append(headers[k * BLOCK:(k + 1) * BLOCK])
            if large[k]:  # what is waiting goes out first, then the kernel copies the data
                written += write_buffers(out_fd, pieces) + size
                pieces = []
                copy_range(fd, out_fd, offsets[k], size, unit.sources[s])
            else:
                at = offsets[k] - lo
                pieces.append(small[at:at + size])
                pending += size
            pieces.append(padding(size))
        m += count
        if pending >= FLUSH_BYTES or len(pieces) >= _IOV_MAX:
            written += write_buffers(out_fd, pieces)
            pieces, pending = [], 0
    pieces.append(END_OF_ARCHIVE)
    return written + write_buffers(out_fd, pieces)


def write_shard(unit: WriteUnit) -> dict[str, int]:
    """Pass 2: copy the unit's samples' raw member bytes into one output tar (a Ray task)."""
    fds: list[int | None] = [None] * len(unit.sources)
    try:
        with atomic_path(unit.tar_path) as tmp:
            # The temporary is new and empty: opened without O_TRUNC, since ext4 flushes a file truncated
            # to zero when it is closed (its auto_da_alloc heuristic), which stalls the task.
            out_fd = os.open(tmp, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                written = _copy_members(out_fd, unit, fds)
            finally:
                os.close(out_fd)
    finally:
        for fd in fds:
            if fd is not None:
                os.close(fd)
    write_json(unit.stats_path, {"successes": len(unit.uids), "bytes": written})
    return {"samples": len(unit.uids), "bytes": written}
