"""The tar reader/writer under reshard: agrees with tarfile, refuses damaged archives, never trusts names."""

from __future__ import annotations

import io
import os
import tarfile
import threading

import numpy as np
import pytest

from poolsieve.core import tar_io
from poolsieve.core.errors import InputError
from poolsieve.core.tar_io import (
    END_OF_ARCHIVE,
    copy_range,
    padding,
    read_index,
    split_key,
    ustar_header,
    ustar_headers,
    write_buffers,
)


def _tar_bytes(members: list[tuple[str, bytes]], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_match_tarfile(tmp_path, fmt):
    long_dir = "d" * 120 if fmt != tarfile.USTAR_FORMAT else "d" * 60
    members = [("a.jpg", b"x" * 700), (f"{long_dir}/{'k' * 90}.json", b'{"uid": 1}'), ("empty.txt", b"")]
    path = tmp_path / "t.tar"
    path.write_bytes(_tar_bytes(members, fmt))
    got = list(read_index(path))
    with tarfile.open(path) as tf:
        want = [(m.name, m.offset_data, m.size) for m in tf.getmembers() if m.isreg()]
    assert [(m.name, m.data_offset, m.size) for m in got] == want  # the symlink is not a regular member
    data = path.read_bytes()
    assert [data[m.data_offset:m.data_offset + m.size] for m in got] == [d for _, d in members]


def test_damaged_archives_raise(tmp_path):
    path = tmp_path / "t.tar"
    good = _tar_bytes([("a.jpg", b"x" * 1000), ("a.txt", b"cap")], tarfile.USTAR_FORMAT)
    path.write_bytes(good[:700])
    with pytest.raises(InputError, match="truncated tar: the member at byte 0 needs 1000 bytes"):
        list(read_index(path))
    path.write_bytes(good[:1536 + 100])  # ends inside the second header
    with pytest.raises(InputError, match="truncated tar"):
        list(read_index(path))
    corrupt = bytearray(good)
    corrupt[10] ^= 0xFF
    path.write_bytes(bytes(corrupt))
    with pytest.raises(InputError, match="bad header checksum at byte 0"):
        list(read_index(path))
    with pytest.raises(InputError, match="missing.tar: does not exist"):
        list(read_index(tmp_path / "missing.tar"))


def test_split_key_keeps_names_out_of_paths():
    assert split_key("00001234.jpg") == ("00001234", "jpg")
    assert split_key("dir/abc.seg.JPG") == ("dir/abc", "seg.jpg")
    assert split_key("../../etc/passwd") is None  # no extension
    assert split_key("x.jpg/../../y") is None  # the extension must be a plain token
    assert split_key("/abs/k.json") == ("/abs/k", "json")  # a key, never a path: output names are {uid}-{j}.ext
    assert split_key(".hidden") is None


def test_written_tar_reads_back_deterministically(tmp_path):
    import os

    items = [("u-0.jpg", b"\xff\xd8" * 300), ("u-0.txt", b"a caption"), ("u-0.json", b"{}")]
    paths = []
    for n in range(2):
        path = tmp_path / f"{n}.tar"
        with open(path, "wb") as f:
            buffers = [part for name, data in items for part in (ustar_header(name, len(data)), memoryview(data),
                                                                padding(len(data)))]
            written = write_buffers(f.fileno(), [*buffers, END_OF_ARCHIVE])
        assert written == os.path.getsize(path)
        paths.append(path)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    with tarfile.open(paths[0]) as tf:
        assert [(m.name, tf.extractfile(m).read(), m.mtime) for m in tf.getmembers()] == [(n, d, 0) for n, d in items]
    with pytest.raises(ValueError):
        ustar_header("x" * 101, 1)


def test_batched_headers_are_the_single_headers():
    names = ["u-0.jpg", "a" * 100, "", "0123456789abcdef0123456789abcdef-12.json"]
    sizes = np.array([0, 1, 8**11 - 1, 123_456_789])
    assert ustar_headers(names, sizes).tobytes() == b"".join(map(ustar_header, names, sizes.tolist()))
    assert ustar_headers([], np.zeros(0, np.int64)).shape == (0, 512)
    with pytest.raises(ValueError, match="longer than 100"):
        ustar_headers(["x" * 101], np.array([1]))
    with pytest.raises(ValueError, match="out of range"):
        ustar_headers(["x"], np.array([8**11]))


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_copy_range_appends_the_bytes_and_refuses_a_short_source(tmp_path, monkeypatch, kernel_copy):
    monkeypatch.setattr(tar_io, "_kernel_copy", kernel_copy)
    monkeypatch.setattr(tar_io, "READ_BLOCK", 1000)  # several reads per copy without the kernel's help
    src, dst = tmp_path / "src", tmp_path / "dst"
    data = os.urandom(10_000)
    src.write_bytes(data)
    sfd = os.open(src, os.O_RDONLY)
    try:
        with open(dst, "wb", buffering=0) as out:
            out.write(b"head")
            copy_range(sfd, out.fileno(), 123, 5000, src)
            copy_range(sfd, out.fileno(), 0, 0, src)
            with pytest.raises(InputError, match="shrank while being copied: cannot read bytes 10000-10001"):
                copy_range(sfd, out.fileno(), 9_000, 1001, src)
    finally:
        os.close(sfd)
    assert dst.read_bytes()[:5004] == b"head" + data[123:5123]


def test_a_fifo_named_like_a_shard_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "00002.tar"
    os.mkfifo(fifo)
    result: list = []

    def read() -> None:
        try:
            list(read_index(fifo))
        except InputError as e:
            result.append(str(e))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # unblock the reader before failing, so the test run is not left hanging
        os.close(os.open(fifo, os.O_RDWR))
        pytest.fail("reading a FIFO named like a shard blocked")
    assert result == [f"{fifo}: is a FIFO, not a regular file; poolsieve reads and writes only regular files here"]
