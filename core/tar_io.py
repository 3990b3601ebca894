"""A small tar reader and writer for webdataset shards: member index without extraction, raw byte copy.

The reader reads a tar front to back in large blocks (cold disks serve sequential reads at full
speed and a seek per header at a fraction of it), parses headers from memory, and can hand back
the data of chosen small members (reshard's ``.json``) in the same pass. It never turns a member
name into a path: names are only split into a webdataset key and extension. It checks header checksums, member sizes against
the file size and the end-of-archive marker, so a truncated or corrupt shard raises ``InputError``
instead of silently losing its tail (Python's ``tarfile`` stops quietly at a truncated header).

The writer emits deterministic ustar headers (mtime 0, mode 0444, owner 0) so the same input
always gives the same bytes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import InputError

BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
_REGULAR_TYPE_CODES = (ord("0"), 0, ord("7"))
_LONG_NAME_TYPES = (ord("L"), ord("x"))
_ZERO_BLOCK = b"\0" * BLOCK
_EXT_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
READ_BLOCK = 16 << 20  # bytes per sequential read
CAPTURE_LIMIT = 1 << 20  # largest member whose data read_tar hands back
LONG_NAME_LIMIT = 64 << 10  # largest GNU long-name or pax record accepted


class Member(NamedTuple):
    """One regular file in a tar: its name, where its data starts and how long it is."""

    name: str
    header_offset: int
    data_offset: int
    size: int

    @property
    def end(self) -> int:
        """Offset just past the member's padded data (where the next header starts)."""
        return self.data_offset + padded(self.size)


def padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def split_key(name: str) -> tuple[str, str] | None:
    """webdataset's split of a member name: ``dir/abc.seg.jpg`` -> (``dir/abc``, ``seg.jpg``).

    Returns ``None`` when the name has no extension or the extension is not a plain lowercase
    token (``[a-z0-9_.-]``): such members are not sample fields and are never copied.
    """
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot <= slash + 1:
        return None
    ext = _clean_ext(name[dot + 1:])
    return None if ext is None else (name[:dot], ext)


@functools.lru_cache(maxsize=1024)
def _clean_ext(ext: str) -> str | None:
    ext = ext.lower()
    return ext if _EXT_RE.match(ext) else None


def _octal(field: bytes, path: Path, offset: int, what: str) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for large values
        value = int.from_bytes(field[1:], "big")
        return -value if field[0] & 0x40 else value
    text = field.split(b"\0", 1)[0].strip(b" \0")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise InputError(path, f"corrupt tar header at byte {offset}: bad {what} field {field!r}") from None


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header, if any."""
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            break
        record = data[space + 1:pos + length - 1]
        key, _, value = record.partition(b"=")
        if key == b"path":
            return value.decode("utf-8", "replace")
        pos += max(length, 1)
    return None


def iter_members(path: str | Path) -> Iterator[Member]:
    """The regular-file members of a tar in file order; raises ``InputError`` if it is damaged."""
    return iter(read_index(path))


def read_index(path: str | Path) -> list[Member]:
    """The regular-file members of a tar in file order (member data is read past, never kept)."""
    return read_tar(path)[0]


def read_tar(path: str | Path, capture: Callable[[str], bool] | None = None,
             capture_limit: int = CAPTURE_LIMIT) -> tuple[list[Member], dict[int, bytes]]:
    """Read a tar front to back in large blocks; return its regular members and the captured data.

    The file is read sequentially (``READ_BLOCK`` at a time, the kernel told so with
    ``posix_fadvise``), headers are parsed from memory, and the data of each member whose name
    ``capture`` accepts and whose size is at most ``capture_limit`` is returned, keyed by
    ``data_offset``: one pass at disk speed instead of a seek per header. Header checksums are
    checked together at the end (numpy), and first when a walk fails, so a corrupt header is
    reported as such rather than as the truncation it leads to.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise InputError(path, f"cannot open tar ({e.strerror})") from None
    headers: list[tuple[int, bytes]] = []
    captured: dict[int, bytes] = {}
    try:
        size = os.fstat(fd).st_size
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        reader = _ForwardReader(fd, size)
        try:
            members = _walk(reader, size, path, headers, captured, capture, capture_limit)
        except InputError:
            _check_checksums(headers, path)
            raise
        _check_checksums(headers, path)
        return members, captured
    finally:
        os.close(fd)


class _ForwardReader:
    """Reads of one file at rising offsets, served from a window refilled ``READ_BLOCK`` bytes at a time."""

    def __init__(self, fd: int, size: int):
        self.fd, self.size = fd, size
        self.buf = bytearray(READ_BLOCK)
        self.view = memoryview(self.buf)
        self.start = 0  # file offset of buf[0]
        self.filled = 0  # valid bytes in buf

    def get(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (fewer at the end of the file); offsets never go back."""
        rel = offset - self.start
        if rel + length <= self.filled:
            return self.view[rel:rel + length].tobytes()
        if rel < self.filled:  # keep the tail that is still wanted, drop what lies before it
            tail = self.filled - rel
            self.view[:tail] = self.view[rel:self.filled]
            self.filled = tail
        else:  # the window lies wholly before ``offset``: skip ahead
            self.filled = 0
        self.start = offset
        if length > len(self.buf):
            self.view.release()
            self.buf.extend(bytes(length - len(self.buf)))
            self.view = memoryview(self.buf)
        while self.filled < length:
            got = os.preadv(self.fd, [self.view[self.filled:]], self.start + self.filled)
            if got <= 0:
                break
            self.filled += got
        return self.view[:min(length, self.filled)].tobytes()


def _walk(reader: _ForwardReader, file_size: int, path: Path, headers: list[tuple[int, bytes]],
          captured: dict[int, bytes], capture: Callable[[str], bool] | None, capture_limit: int) -> list[Member]:
    members: list[Member] = []
    offset = 0
    long_name: str | None = None
    get = reader.get
    while True:
        header = get(offset, BLOCK)
        if len(header) < BLOCK:
            raise InputError(path, f"truncated tar: file ends at byte {file_size} inside or before the "
                                   f"header at byte {offset} (no end-of-archive marker)")
        if header == _ZERO_BLOCK:
            return members
        headers.append((offset, header))
        try:
            size = int(header[124:135], 8)
        except ValueError:
            size = _octal(header[124:136], path, offset, "size")
        if size < 0:
            raise InputError(path, f"corrupt tar: negative member size at byte {offset}")
        data_offset = offset + BLOCK
        if data_offset + size > file_size:
            raise InputError(path, f"truncated tar: the member at byte {offset} needs {size} bytes of data "
                                   f"but the file ends at byte {file_size}")
        typeflag = header[156]
        if typeflag in _LONG_NAME_TYPES:
            if size > LONG_NAME_LIMIT:
                raise InputError(path, f"corrupt tar: a {size}-byte long-name record at byte {offset}")
            data = get(data_offset, size)
            long_name = data.rstrip(b"\0").decode("utf-8", "replace") if typeflag == ord("L") else _pax_path(data)
        else:
            if long_name is not None:
                name = long_name
            else:
                name = header[:header.find(b"\0") % 101].decode("utf-8", "replace")
                if header[345] and header[257:262] == b"ustar":
                    prefix = header[345:500]
                    name = prefix[:prefix.find(b"\0") % 156].decode("utf-8", "replace") + "/" + name
            long_name = None
            if typeflag in _REGULAR_TYPE_CODES:
                members.append(Member(name, offset, data_offset, size))
                if capture is not None and size <= capture_limit and capture(name):
                    captured[data_offset] = get(data_offset, size)
        offset = data_offset + -(-size // BLOCK) * BLOCK


def _check_checksums(headers: list[tuple[int, bytes]], path: Path) -> None:
    """Raise on the first header whose stored checksum is not the sum of its bytes."""
    if not headers:
        return

    rows = np.frombuffer(b"".join(h for _, h in headers), dtype=np.uint8).reshape(-1, BLOCK)
    field = rows[:, 148:156].astype(np.int64)
    actual = rows.sum(axis=1, dtype=np.int64) - field.sum(axis=1) + 8 * 32
    digit = (field >= 48) & (field <= 55)
    after = np.cumsum(digit[:, ::-1], axis=1)[:, ::-1] - digit
    stored = (np.where(digit, field - 48, 0) * (8 ** np.minimum(after, 20))).sum(axis=1)
    bad = np.flatnonzero(stored != actual)
    if len(bad):
        raise InputError(path, f"corrupt tar: bad header checksum at byte {headers[int(bad[0])][0]}")


def _header_template() -> tuple[bytes, int]:
    """A ustar header with an empty name and size 0, and its checksum with the checksum field blank."""
    header = bytearray(BLOCK)
    header[100:108] = b"0000444\0"
    header[108:116] = b"0000000\0"
    header[116:124] = b"0000000\0"
    header[124:136] = b"%011o\0" % 0
    header[136:148] = b"00000000000\0"
    header[148:156] = b" " * 8
    header[156:157] = b"0"
    header[257:263] = b"ustar\0"
    header[263:265] = b"00"
    return bytes(header), sum(header) - sum(header[124:136])


_TEMPLATE, _TEMPLATE_SUM = _header_template()


def ustar_header(name: str, size: int) -> bytes:
    """A deterministic ustar header for a regular file (``name`` is at most 100 ASCII bytes)."""
    raw = name.encode("ascii")
    if len(raw) > 100:
        raise ValueError(f"member name longer than 100 bytes: {name!r}")
    if not 0 <= size < 8**11:
        raise ValueError(f"member size out of range for a ustar header: {size} bytes")
    header = bytearray(_TEMPLATE)
    header[0:len(raw)] = raw
    size_field = b"%011o\0" % size
    header[124:136] = size_field
    header[148:156] = b"%06o\0 " % (_TEMPLATE_SUM + sum(raw) + sum(size_field))
    return bytes(header)


_PADDINGS = [b"\0" * n for n in range(BLOCK)]


def padding(size: int) -> bytes:
    """The zero bytes that follow ``size`` bytes of member data up to the next block."""
    return _PADDINGS[-size % BLOCK]


def write_buffers(fd: int, buffers: list) -> int:
    """Write ``buffers`` (bytes or memoryviews) in order with ``writev``; return the byte count."""
    total = 0
    for lo in range(0, len(buffers), 1024):  # IOV_MAX
        batch = buffers[lo:lo + 1024]
        want = sum(len(b) for b in batch)
        done = os.writev(fd, batch)
        if done < want:  # a short write: finish the batch with plain writes
            rest = memoryview(b"".join(batch))[done:]
            while rest:
                rest = rest[os.write(fd, rest):]
        total += want
    return total
