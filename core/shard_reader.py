"""Reading img2dataset webdataset shards sample by sample, in key order, with errors that name the shard.

A sample is the run of consecutive tar members that share a key (``{key}.jpg``, ``{key}.txt``,
``{key}.json``). Samples come out sorted by key, not in the order the tar holds them: img2dataset
writes a shard's samples in the order their fetches finished, so two downloads of one pool give the
same samples in different orders, while a key is fixed by the sample's input row (``{shard}{row}``,
zero-padded: key order is metadata order). The tar is indexed first (``core/tar_io.read_index``: names,
offsets and sizes, checksums checked, no data kept) and each sample's members are then read by offset,
so nothing but the index is held for the whole shard. Runs that share a key (a hand-made tar) keep
their tar order among themselves.

A tar that ends early or is corrupt raises ``InputError(tar, ...)`` before any sample is returned; a
sample whose image bytes are bad is still returned (decoding is the caller's business, and a failure
there is a recorded row, not a crash).

A shard may come from anyone, so nothing in it is read whole unless it is small by rule
(``core/formats.py``): the shard must be a regular file (a FIFO in its place is refused, never waited
on); an image member over ``MAX_IMAGE_BYTES`` is skipped unread (``TarSample.image_over_cap`` holds its
size); a caption keeps its first ``MAX_CAPTION_BYTES`` (``caption_full_bytes`` holds the full size); a
``.json`` over ``MAX_SAMPLE_JSON_BYTES`` is refused with the shard (a json number too long for any value
is read as infinity); members of kinds that ``core/member_kinds.py`` does not allow are skipped unread.
Skipping is a seek: a 16 GiB member costs nothing.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .formats import MAX_CAPTION_BYTES, MAX_IMAGE_BYTES, MAX_SAMPLE_JSON_BYTES
from .member_kinds import IMAGE_KINDS as IMAGE_EXTENSIONS
from .member_kinds import LABEL_KINDS
from .member_kinds import TEXT_KINDS as TEXT_EXTENSIONS
from .tar_io import Member, read_index
from .untrusted_files import open_regular_fd

MAX_LABEL_BYTES = 64  # a class index written as decimal text
_MAX_JSON_INT_DIGITS = 64  # a longer integer in a sample's json is read as infinity (out of any range)


@dataclass
class TarSample:
    """One sample of a pool shard: raw image bytes, caption and img2dataset's per-sample json."""

    key: str
    image: bytes | None = None
    image_ext: str = ""
    text: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, bytes] = field(default_factory=dict)  # label members by extension (``cls``)
    image_over_cap: int | None = None  # size of an image member over MAX_IMAGE_BYTES, left unread
    caption_cut_from: int | None = None  # full size of a caption cut to MAX_CAPTION_BYTES

    @property
    def uid(self) -> str | None:
        uid = self.meta.get("uid")
        return str(uid) if uid is not None else None

    @property
    def caption(self) -> str | None:
        """The ``.txt`` member, else the json's ``caption``; either cut to ``MAX_CAPTION_BYTES``."""
        return self.text if self.text is not None else self._json_caption()[0]

    @property
    def caption_full_bytes(self) -> int | None:
        """The full size in bytes of a caption that ``caption`` holds the first ``MAX_CAPTION_BYTES`` of;
        None when the caption is whole."""
        return self.caption_cut_from if self.text is not None else self._json_caption()[1]

    def _json_caption(self) -> tuple[str | None, int | None]:
        cap = self.meta.get("caption")
        if cap is None:
            return None, None
        cap = str(cap)
        if len(cap) <= MAX_CAPTION_BYTES // 4:  # at most 4 bytes a character: under the cap
            return cap, None
        raw = cap.encode("utf-8", "replace")
        if len(raw) <= MAX_CAPTION_BYTES:
            return cap, None
        return _cut_utf8(raw[:MAX_CAPTION_BYTES], cut=True), len(raw)


def _split_name(name: str) -> tuple[str, str]:
    """``dir/000010003.jpg`` -> (``dir/000010003``, ``jpg``); webdataset keys end at the first dot of the basename."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower() if dot else ""


def iter_tar_samples(path: str | Path) -> Iterator[TarSample]:
    """Yield the samples of ``path`` sorted by key. Raises ``InputError(path, ...)`` on a bad tar, or when
    ``path`` is not a regular file."""
    path = Path(path)
    fd = open_regular_fd(path)
    try:
        for key, parts in index_samples(fd, path):
            sample = TarSample(key=key)
            for ext, member in parts:
                _attach(sample, ext, member, fd, path)
            yield sample
    finally:
        os.close(fd)


def index_samples(fd: int, path: Path) -> list[tuple[str, list[tuple[str, Member]]]]:
    """``(key, [(extension, member), ...])`` of every sample of the open tar ``fd``, sorted by key."""
    try:  # the open file itself, not ``path`` again: what is indexed is what is read (and never a FIFO)
        members = read_index(f"/dev/fd/{fd}")
    except InputError as e:
        raise InputError(path, e.problem) from None
    runs: list[tuple[str, list[tuple[str, Member]]]] = []
    for member in members:
        key, ext = _split_name(member.name)
        if not ext or key.rsplit("/", 1)[-1].startswith("."):
            continue
        if not runs or runs[-1][0] != key:
            runs.append((key, []))
        runs[-1][1].append((ext, member))
    runs.sort(key=lambda run: run[0])  # stable: runs of one key keep their tar order
    return runs


def _read(fd: int, member: Member, path: Path, limit: int | None = None) -> bytes:
    """The member's data, or its first ``limit`` bytes; data cut short (the file shrank) raises."""
    want = member.size if limit is None else min(member.size, limit)
    data = os.pread(fd, want, member.data_offset)
    while len(data) < want:
        more = os.pread(fd, want - len(data), member.data_offset + len(data))
        if not more:
            raise InputError(path, f"truncated tar: member {member.name} is cut short (the file changed while read)")
        data += more
    return data


def _attach(sample: TarSample, ext: str, member: Member, fd: int, path: Path) -> None:
    if ext in IMAGE_EXTENSIONS:
        if member.size > MAX_IMAGE_BYTES:
            sample.image, sample.image_ext, sample.image_over_cap = None, ext, member.size
        else:
            sample.image, sample.image_ext = _read(fd, member, path), ext
    elif ext in TEXT_EXTENSIONS:
        cut = member.size > MAX_CAPTION_BYTES
        sample.text = _cut_utf8(_read(fd, member, path, MAX_CAPTION_BYTES), cut)
        sample.caption_cut_from = member.size if cut else None
    elif ext == "json":
        if member.size > MAX_SAMPLE_JSON_BYTES:
            raise InputError(path, f"sample {sample.key}: its .json is {member.size} bytes, over the "
                                   f"{MAX_SAMPLE_JSON_BYTES >> 10} KiB a sample's json may have")
        try:
            meta = json.loads(_read(fd, member, path), parse_int=_bounded_int)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise InputError(path, f"sample {sample.key}: its .json is not valid JSON ({e})") from None
        if not isinstance(meta, dict):
            raise InputError(path, f"sample {sample.key}: its .json is not an object")
        sample.meta = meta
    elif ext in LABEL_KINDS and member.size <= MAX_LABEL_BYTES:
        sample.extras[ext] = _read(fd, member, path)
    # any other kind (not allowed by core/member_kinds.py, or a label too long to be one) is skipped unread


def _cut_utf8(data: bytes, cut: bool) -> str:
    """``data`` as text; when it was ``cut`` from a longer member, a character split at the end is dropped."""
    return codecs.getincrementaldecoder("utf-8")("replace").decode(data, final=not cut)


def _bounded_int(text: str) -> Any:
    """json's integers; one of more than ``_MAX_JSON_INT_DIGITS`` digits is infinity (no value fits it)."""
    if len(text.lstrip("-")) > _MAX_JSON_INT_DIGITS:
        return float("-inf") if text.startswith("-") else float("inf")
    return int(text)


def read_shard(path: str | Path) -> list[TarSample]:
    """All samples of a shard, sorted by key."""
    return list(iter_tar_samples(path))
