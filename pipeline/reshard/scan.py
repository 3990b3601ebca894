"""Reshard's pass 1: which samples of one pool tar are in the subset, and where their members lie.

A Ray task per pool shard reads the tar once, front to back (``core.tar_io.index_tar``): headers and
each sample's ``.json`` (for its uid) come from memory, and a digest of the file's bytes comes with
them (the pool's fingerprint, ``fingerprint.py``). Samples are runs of consecutive members sharing a
key, as webdataset groups them. Only members of the allowed kinds (``core.member_kinds``) are kept
for copying; every other member is counted by kind and never copied. The kept samples come back in
key order with their members as flat arrays (no object per sample or member).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from poolsieve.core.errors import InputError
from poolsieve.core.member_kinds import ALLOWED_KINDS
from poolsieve.core.tar_io import clean_ext, index_tar
from poolsieve.core.uids import KEY_DTYPE, hex_to_keys, is_valid_uid

KINDS = tuple(sorted(ALLOWED_KINDS))  # a member's kind travels as its index in this tuple
_KIND_CODE = {kind: code for code, kind in enumerate(KINDS)}
NO_KIND = "(no extension)"  # a member name without a plain extension
OTHER_KINDS = "(other kinds)"  # past MAX_KINDS_LISTED distinct kinds, the rest are counted together
MAX_KINDS_LISTED = 32


def _empty(dtype: type | np.dtype = np.int64):
    return field(default_factory=lambda: np.empty(0, dtype))


@dataclass
class ScanUnit:
    tar_path: str
    keys_path: str  # the subset as sorted 16-byte keys (``core.uids``), row for row


@dataclass
class ShardScan:
    """One pool shard's kept samples (key order) and members (flat, sample after sample), and its identity."""

    tar_path: str
    identity: tuple[int, ...] = ()  # (size, mtime_ns, ctime_ns, inode) when the scan began
    digest: str = ""  # of every byte of the tar (core.tar_io.DIGEST)
    samples: int = 0
    samples_without_uid: int = 0
    skipped_kinds: dict[str, int] = field(default_factory=dict)
    uids: np.ndarray = _empty(KEY_DTYPE)  # 16-byte uid keys
    copies: np.ndarray = _empty()
    subset_rows: np.ndarray = _empty()  # per kept sample: the first row of its uid in the subset file
    member_count: np.ndarray = _empty()
    member_kind: np.ndarray = _empty(np.uint8)
    member_offset: np.ndarray = _empty()
    member_size: np.ndarray = _empty()

    @property
    def skipped_members(self) -> int:
        return sum(self.skipped_kinds.values())


def file_identity(st: os.stat_result) -> tuple[int, ...]:
    """What tells that a file was not touched since: size, modification and change times, inode."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _is_json(name: str) -> bool:
    return name[-5:].lower() == ".json"


@dataclass
class _Samples:
    """Samples of a tar as flat lists: key, where its kept members start in ``members``, its json member."""

    keys: list[str] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    json_member: list[int] = field(default_factory=list)
    members: list[int] = field(default_factory=list)  # indices into the tar's member lists, allowed kinds only
    kinds: list[int] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def group_samples(names: list[str]) -> _Samples:
    """Members grouped into samples as webdataset groups them: a new sample at each change of key or
    repeat of an extension. Members of kinds not allowed take part in grouping but are not kept."""
    out = _Samples()
    keys, starts, json_member, members, kinds, skipped = (out.keys, out.starts, out.json_member, out.members,
                                                         out.kinds, out.skipped)
    key: str | None = None
    seen: set[str] = set()
    for i, name in enumerate(names):
        slash = name.rfind("/")
        dot = name.find(".", slash + 1)
        ext = clean_ext(name[dot + 1:]) if dot > slash + 1 else None
        if ext is None:
            skipped[NO_KIND] += 1
            continue
        member_key = name[:dot]
        if member_key != key or ext in seen:
            key, seen = member_key, set()
            keys.append(member_key)
            starts.append(len(members))
            json_member.append(-1)
        seen.add(ext)
        code = _KIND_CODE.get(ext)
        if code is None:
            skipped[ext if len(skipped) < MAX_KINDS_LISTED or ext in skipped else OTHER_KINDS] += 1
            continue
        if ext == "json":
            json_member[-1] = i
        members.append(i)
        kinds.append(code)
    starts.append(len(members))
    return out


def _uid_candidate(data: bytes | None) -> str | None:
    """The ``uid`` of an img2dataset record, if it is a 32-character string (checked as hex later)."""
    if data is None:  # larger than tar_io's CAPTURE_LIMIT: not an img2dataset record
        return None
    try:
        uid = json.loads(data.decode("utf-8")).get("uid")
    except (ValueError, AttributeError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return uid if isinstance(uid, str) and len(uid) == 32 else None


def uid_keys(candidates: list[str], source: Path) -> tuple[np.ndarray, np.ndarray]:
    """The valid uids among ``candidates`` as keys, and the mask of which were valid (one vectorised check)."""
    try:
        return hex_to_keys(candidates, source), np.ones(len(candidates), bool)
    except InputError:  # some uid is not lower-case hex: sort them out one by one
        valid = np.array([is_valid_uid(u) for u in candidates], bool)
        return hex_to_keys([u for u, ok in zip(candidates, valid, strict=True) if ok], source), valid


def scan_shard(unit: ScanUnit) -> ShardScan:
    """Pass 1: the samples of one pool tar whose uid is in the subset (a Ray task)."""
    tar_path = Path(unit.tar_path)
    identity = file_identity(os.stat(tar_path))
    index = index_tar(tar_path, capture=_is_json, digest=True)
    grouped = group_samples(index.names)
    scan = ShardScan(str(tar_path), identity, index.digest or "", samples=len(grouped.keys),
                     skipped_kinds=dict(grouped.skipped))
    captured, offsets = index.captured, index.data_offsets
    with_uid, candidates = [], []
    for s, j in enumerate(grouped.json_member):
        uid = _uid_candidate(captured.get(offsets[j])) if j >= 0 else None
        if uid is not None:
            with_uid.append(s)
            candidates.append(uid)
    found, valid = uid_keys(candidates, tar_path)
    with_uid_arr = np.asarray(with_uid, np.int64)[valid]
    scan.samples_without_uid = scan.samples - len(with_uid_arr)
    subset = np.load(unit.keys_path, mmap_mode="r", allow_pickle=False)
    if len(with_uid_arr) == 0 or len(subset) == 0:
        return scan
    first = np.searchsorted(subset, found, "left")
    counts = np.searchsorted(subset, found, "right") - first
    keep = np.flatnonzero(counts > 0)
    keys = grouped.keys
    order = sorted(keep.tolist(), key=lambda i: keys[with_uid_arr[i]])  # key order (stable: file order on ties)
    kept = with_uid_arr[order]
    scan.uids, scan.copies, scan.subset_rows = found[order], counts[order].astype(np.int64), first[order]
    starts = np.asarray(grouped.starts, np.int64)
    first, count = starts[kept], starts[kept + 1] - starts[kept]
    rows = np.repeat(first - (np.cumsum(count) - count), count) + np.arange(int(count.sum()))
    members = np.asarray(grouped.members, np.int64)[rows]
    scan.member_count = count
    scan.member_kind = np.asarray(grouped.kinds, np.uint8)[rows]
    scan.member_offset = np.asarray(offsets, np.int64)[members]
    scan.member_size = np.asarray(index.sizes, np.int64)[members]
    return scan
