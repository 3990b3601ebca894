"""A small tar reader and writer for webdataset shards: member index without extraction, raw byte copy.

The reader reads a tar front to back in large blocks (cold disks serve sequential reads at full
speed and a seek per header at a fraction of it), parses headers from memory, and can hand back
the data of chosen small members (reshard's ``.json``) and a digest of the whole file's bytes in the
same pass. It opens only regular files (a FIFO named like a shard is refused, never waited on) and
never turns a member name into a path: names are only split into a webdataset key and extension. It
checks header checksums, member sizes against the file size and the end-of-archive marker, so a
truncated or corrupt shard raises ``InputError`` instead of silently losing its tail (Python's
``tarfile`` stops quietly at a truncated header).

The writer emits deterministic ustar headers (mtime 0, mode 0444, owner 0) so the same input
always gives the same bytes; ``ustar_headers`` makes a whole batch of them at once (numpy), and
``copy_range`` moves member data from file to file inside the kernel (``copy_file_range``) where it
can, with a plain read and write where it cannot.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import xxhash

from .errors import InputError
from .untrusted_files import open_regular_fd

BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
_REGULAR_TYPE_CODES = (ord("0"), 0, ord("7"))
_LONG_NAME_TYPES = (ord("L"), ord("x"))
_ZERO_BLOCK = b"\0" * BLOCK
_EXT_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
READ_BLOCK = 16 << 20  # bytes per sequential read
CAPTURE_LIMIT = 1 << 20  # largest member whose data read_tar hands back
LONG_NAME_LIMIT = 64 << 10  # largest GNU long-name or pax record accepted
DIGEST = "xxh3_128"  # the content digest of ``index_tar(..., digest=True)``


class Member(NamedTuple):
    """One regular file in a tar: its name, where its data starts and how long it is."""

    name: str
    header_offset: int
    data_offset: int
    size: int


class TarIndex(NamedTuple):
    """The regular members of a tar as parallel lists (file order; a member's header is the block
    before its data), what was captured, and the file's size and digest (``None`` unless asked for)."""

    names: list[str]
    data_offsets: list[int]
    sizes: list[int]
    captured: dict[int, bytes]
    file_size: int
    digest: str | None


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
    ext = clean_ext(name[dot + 1:])
    return None if ext is None else (name[:dot], ext)


@functools.lru_cache(maxsize=1024)
def clean_ext(ext: str) -> str | None:
    """``ext`` lower-cased when it is a plain token (``[a-z0-9_.-]``, at most 32 characters), else None."""
    ext = ext.lower()
    return ext if _EXT_RE.match(ext) else None


def _octal(field: bytes, path: Path, offset: int, what: str) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for large values
        value = int.from_bytes(field[1:], "big")
        return -value if field[0] & 0x40 else value
    text = bytes(field).split(b"\0", 1)[0].strip(b" \0")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise InputError(path, f"corrupt tar header at byte {offset}: bad {what} field {bytes(field)!r}") from None


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
            return bytes(value).decode("utf-8", "replace")
        pos += max(length, 1)
    return None


def read_index(path: str | Path) -> list[Member]:
    """The regular-file members of a tar in file order (member data is read past, never kept)."""
    return read_tar(path)[0]


def read_tar(path: str | Path, capture: Callable[[str], bool] | None = None,
             capture_limit: int = CAPTURE_LIMIT) -> tuple[list[Member], dict[int, bytes]]:
    """The regular members of a tar (``Member`` objects) and the data ``capture`` asked for (see ``index_tar``)."""
    index = index_tar(path, capture, capture_limit)
    members = [Member(name, offset - BLOCK, offset, size)
               for name, offset, size in zip(index.names, index.data_offsets, index.sizes, strict=True)]
    return members, index.captured


def index_tar(path: str | Path, capture: Callable[[str], bool] | None = None,
              capture_limit: int = CAPTURE_LIMIT, *, digest: bool = False) -> TarIndex:
    """Read a tar front to back in large blocks; return its regular members, the captured data and
    (with ``digest``) the ``DIGEST`` of every byte of the file.

    The file is read sequentially (``READ_BLOCK`` at a time, the kernel told so with
    ``posix_fadvise`` and asked for the next block while this one is parsed), headers are parsed from memory, and the data of each member whose name
    ``capture`` accepts and whose size is at most ``capture_limit`` is returned, keyed by
    ``data_offset``: one pass at disk speed instead of a seek per header. Header checksums are
    checked together at the end (numpy), and first when a walk fails, so a corrupt header is
    reported as such rather than as the truncation it leads to.
    """
    path = Path(path)
    fd = open_regular_fd(path)
    try:
        size = os.fstat(fd).st_size
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        reader = _ForwardReader(fd, size, path, xxhash.xxh3_128() if digest else None)
        walk = _Walk(reader, capture, capture_limit)
        try:
            walk.run()
        except InputError:
            _check_checksums(walk.headers, walk.header_at, path)
            raise
        _check_checksums(walk.headers, walk.header_at, path)
        return TarIndex(walk.names, walk.data_offsets, walk.sizes, walk.captured, size,
                        reader.finish() if digest else None)
    finally:
        os.close(fd)


def file_digest(path: str | Path) -> tuple[int, str]:
    """The size and ``DIGEST`` of a file's bytes (read sequentially in ``READ_BLOCK`` pieces)."""
    fd = open_regular_fd(path)
    try:
        reader = _ForwardReader(fd, os.fstat(fd).st_size, Path(path), xxhash.xxh3_128())
        return reader.size, reader.finish()
    finally:
        os.close(fd)


class _ForwardReader:
    """Reads of one file at rising offsets, served from a window refilled ``READ_BLOCK`` bytes at a time.

    With a ``hasher`` every byte of the file passes through it in order: a skip ahead reads the bytes
    it skips, and ``finish`` reads to the end of the file and returns the digest.
    """

    def __init__(self, fd: int, size: int, path: Path, hasher: xxhash.xxh3_128 | None = None):
        self.fd, self.size, self.path, self.hasher = fd, size, path, hasher
        self.buf = bytearray(READ_BLOCK)
        self.start = 0  # file offset of buf[0]
        self.filled = 0  # valid bytes in buf
        self.read_to = 0  # file offset up to which bytes were read (and hashed)

    def get(self, offset: int, length: int) -> bytearray:
        """``length`` bytes at ``offset`` (fewer at the end of the file); offsets never go back."""
        rel = offset - self.start
        if rel + length <= self.filled:
            return self.buf[rel:rel + length]
        if rel < self.filled:  # keep the tail that is still wanted, drop what lies before it
            tail = self.filled - rel
            self.buf[:tail] = self.buf[rel:self.filled]
            self.filled = tail
        else:  # the window lies wholly before ``offset``: skip ahead (reading the gap when hashing)
            self.filled = 0
            if self.hasher is not None:
                self._hash_through(offset)
        self.start = offset
        if length > len(self.buf):
            self.buf.extend(bytes(length - len(self.buf)))
        self._fill(length)
        return self.buf[:min(length, self.filled)]

    def _fill(self, want: int) -> None:
        with memoryview(self.buf) as view:
            while self.filled < want and self.start + self.filled < self.size:
                got = os.preadv(self.fd, [view[self.filled:]], self.start + self.filled)
                if got <= 0:
                    break
                if self.hasher is not None:
                    self.hasher.update(view[self.filled:self.filled + got])
                self.filled += got
        self.read_to = self.start + self.filled
        if self.read_to < self.size:  # the disk reads the next window while this one is parsed
            with contextlib.suppress(OSError):
                os.posix_fadvise(self.fd, self.read_to, len(self.buf), os.POSIX_FADV_WILLNEED)

    def _hash_through(self, offset: int) -> None:
        """Read and hash the bytes from ``read_to`` up to ``offset`` (a gap the caller skips)."""
        with memoryview(self.buf) as view:
            while self.read_to < min(offset, self.size):
                got = os.preadv(self.fd, [view[:min(len(self.buf), offset - self.read_to)]], self.read_to)
                if got <= 0:
                    break
                self.hasher.update(view[:got])
                self.read_to += got

    def finish(self) -> str:
        """The digest of the whole file (reads what is left after the last ``get``)."""
        self.filled = 0
        self._hash_through(self.size)
        if self.read_to < self.size:
            raise InputError(self.path, f"shrank while being read (to {self.read_to} of {self.size} bytes)")
        return self.hasher.hexdigest()


class _Walk:
    """The header walk of ``index_tar``: one pass over the headers, members kept as parallel lists."""

    def __init__(self, reader: _ForwardReader, capture: Callable[[str], bool] | None, capture_limit: int):
        self.reader, self.capture, self.capture_limit = reader, capture, capture_limit
        self.names: list[str] = []
        self.header_at: list[int] = []  # the offset of every header (members, links, long-name records)
        self.data_offsets: list[int] = []
        self.sizes: list[int] = []
        self.headers: list[bytearray] = []
        self.captured: dict[int, bytes] = {}

    def run(self) -> None:
        reader, capture, capture_limit = self.reader, self.capture, self.capture_limit
        path, file_size = reader.path, reader.size
        names, header_at, data_offsets, sizes, headers = (
            self.names, self.header_at, self.data_offsets, self.sizes, self.headers)
        offset, long_name = 0, None
        buf, start, filled = reader.buf, reader.start, reader.filled
        while True:
            rel = offset - start
            if rel + BLOCK <= filled:  # the common case: the header is in the window
                header = buf[rel:rel + BLOCK]
            else:
                header = reader.get(offset, BLOCK)
                buf, start, filled = reader.buf, reader.start, reader.filled
            if len(header) < BLOCK:
                raise InputError(path, f"truncated tar: file ends at byte {file_size} inside or before the "
                                       f"header at byte {offset} (no end-of-archive marker)")
            if header == _ZERO_BLOCK:
                return
            headers.append(header)
            header_at.append(offset)
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
                data = reader.get(data_offset, size)
                buf, start, filled = reader.buf, reader.start, reader.filled
                long_name = (bytes(data).rstrip(b"\0").decode("utf-8", "replace") if typeflag == ord("L")
                             else _pax_path(data))
            else:
                if long_name is not None:
                    name, long_name = long_name, None
                else:
                    name = header[:header.find(0) % 101].decode("utf-8", "replace")
                    if header[345] and header[257:262] == b"ustar":
                        prefix = header[345:500]
                        name = prefix[:prefix.find(0) % 156].decode("utf-8", "replace") + "/" + name
                if typeflag in _REGULAR_TYPE_CODES:
                    names.append(name)
                    data_offsets.append(data_offset)
                    sizes.append(size)
                    if capture is not None and size <= capture_limit and capture(name):
                        drel = data_offset - start
                        if drel + size <= filled:
                            self.captured[data_offset] = bytes(buf[drel:drel + size])
                        else:
                            self.captured[data_offset] = bytes(reader.get(data_offset, size))
                            buf, start, filled = reader.buf, reader.start, reader.filled
            offset = data_offset + -(-size // BLOCK) * BLOCK


def _check_checksums(headers: list[bytearray], offsets: list[int], path: Path) -> None:
    """Raise on the first header whose stored checksum is not the sum of its bytes (``offsets``: where each is)."""
    if not headers:
        return
    rows = np.frombuffer(b"".join(headers), dtype=np.uint8).reshape(-1, BLOCK)
    field = rows[:, 148:156].astype(np.int64)
    actual = rows.sum(axis=1, dtype=np.int64) - field.sum(axis=1) + 8 * 32
    digit = (field >= 48) & (field <= 55)
    after = np.cumsum(digit[:, ::-1], axis=1)[:, ::-1] - digit
    stored = (np.where(digit, field - 48, 0) * (8 ** np.minimum(after, 20))).sum(axis=1)
    bad = np.flatnonzero(stored != actual)
    if len(bad):
        raise InputError(path, f"corrupt tar: bad header checksum at byte {offsets[int(bad[0])]}")


# ------------------------------------------------------------------------------------ writing
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
_SIZE_SHIFTS = np.arange(30, -1, -3, dtype=np.int64)  # the 11 octal digits of the size field
_SUM_SHIFTS = np.arange(15, -1, -3, dtype=np.int64)  # the 6 octal digits of the checksum field


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


def ustar_headers(names: Sequence[str], sizes: np.ndarray) -> np.ndarray:
    """``ustar_header`` of every (name, size) pair at once: an ``(n, 512)`` uint8 array, same bytes."""
    n = len(names)
    sizes = np.asarray(sizes, dtype=np.int64)
    if n and (int(sizes.min()) < 0 or int(sizes.max()) >= 8**11):
        raise ValueError("member size out of range for a ustar header")
    encoded = np.array(names, dtype="S101") if n else np.zeros(0, "S101")
    if n and int(np.char.str_len(encoded).max()) > 100:
        raise ValueError("member name longer than 100 bytes")
    headers = np.empty((n, BLOCK), dtype=np.uint8)
    headers[:] = np.frombuffer(_TEMPLATE, dtype=np.uint8)
    headers[:, :100] = encoded.view(np.uint8).reshape(n, 101)[:, :100]
    headers[:, 124:135] = ((sizes[:, None] >> _SIZE_SHIFTS) & 7) + 48
    total = headers.sum(axis=1, dtype=np.int64)  # the checksum field holds spaces, as the sum requires
    headers[:, 148:154] = ((total[:, None] >> _SUM_SHIFTS) & 7) + 48
    headers[:, 154] = 0
    return headers


_PADDINGS = [b"\0" * n for n in range(BLOCK)]


def padding(size: int) -> bytes:
    """The zero bytes that follow ``size`` bytes of member data up to the next block."""
    return _PADDINGS[-size % BLOCK]


def write_buffers(fd: int, buffers: list) -> int:
    """Write ``buffers`` (bytes or memoryviews) in order with ``writev``; return the byte count."""
    total = 0
    for lo in range(0, len(buffers), 1024):  # IOV_MAX
        batch = buffers[lo:lo + 1024]
        want = sum(map(len, batch))
        done = os.writev(fd, batch)
        if done < want:  # a short write: finish the batch with plain writes
            rest = memoryview(b"".join(batch))[done:]
            while rest:
                rest = rest[os.write(fd, rest):]
        total += want
    return total


_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF, errno.ETXTBSY}
_kernel_copy = hasattr(os, "copy_file_range")


def copy_range(src_fd: int, dst_fd: int, offset: int, size: int, source: str | Path) -> None:
    """Append ``size`` bytes of ``src_fd`` at ``offset`` to ``dst_fd`` (at its file position).

    ``copy_file_range`` copies inside the kernel (no pass through Python's memory); file systems or
    kernels that refuse it get a ``pread`` and ``write``. A source that ends early raises ``InputError``.
    """
    global _kernel_copy
    done = 0
    while done < size and _kernel_copy:
        try:
            got = os.copy_file_range(src_fd, dst_fd, size - done, offset + done)
        except OSError as e:
            if e.errno not in _NO_KERNEL_COPY:
                raise
            _kernel_copy = False
            break
        if got == 0:
            raise InputError(source, f"shrank while being copied: cannot read bytes {offset + done}-{offset + size}")
        done += got
    while done < size:
        data = os.pread(src_fd, min(size - done, READ_BLOCK), offset + done)
        if not data:
            raise InputError(source, f"shrank while being copied: cannot read bytes {offset + done}-{offset + size}")
        view = memoryview(data)
        while view:
            view = view[os.write(dst_fd, view):]
        done += len(data)
