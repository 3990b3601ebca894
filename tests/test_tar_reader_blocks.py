"""tar_io's block reader: the same members and captured bytes whatever the block size, bounded reads."""

from __future__ import annotations

import io
import os
import tarfile

import pytest
import xxhash

from poolsieve.core import tar_io
from poolsieve.core.errors import InputError
from poolsieve.core.tar_io import file_digest, index_tar, read_tar


def _write_tar(path, members: list[tuple[str, bytes]], fmt: int = tarfile.GNU_FORMAT) -> None:
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("block", [512, 1536, 4096, 1 << 20])
def test_block_size_does_not_change_what_is_read(tmp_path, monkeypatch, block):
    """Members larger than the block, headers across block edges and long names all come out the same."""
    members = [(f"{'d' * 150}/k{i}.{ext}", os.urandom(n))
               for i, n in enumerate([0, 1, 511, 512, 513, 3000, 9000, 70])
               for ext, n in (("jpg", n), ("json", n // 7 + 1))]
    path = tmp_path / "t.tar"
    _write_tar(path, members)
    monkeypatch.setattr(tar_io, "READ_BLOCK", block)
    got, captured = read_tar(path, capture=lambda name: name.endswith(".json"))
    with tarfile.open(path) as tf:
        want = [(m.name, m.offset_data, m.size) for m in tf.getmembers()]
    assert [(m.name, m.data_offset, m.size) for m in got] == want
    data = dict(members)
    assert {m.data_offset: data[m.name] for m in got if m.name.endswith(".json")} == captured


def test_capture_is_bounded_and_long_names_are_limited(tmp_path):
    path = tmp_path / "t.tar"
    _write_tar(path, [("a.json", b"x" * 5000), ("b.json", b"{}")])
    members, captured = read_tar(path, capture=lambda name: True, capture_limit=4096)
    assert list(captured.values()) == [b"{}"]  # the 5000-byte member is indexed, not handed back
    assert [m.name for m in members] == ["a.json", "b.json"]
    _write_tar(path, [("n" * (tar_io.LONG_NAME_LIMIT + 10) + ".json", b"{}")])
    with pytest.raises(InputError, match="long-name record"):
        read_tar(path)


def test_cut_inside_a_header_is_reported(tmp_path):
    path = tmp_path / "t.tar"
    _write_tar(path, [("a.jpg", b"x" * 600), ("a.json", b"{}")], fmt=tarfile.USTAR_FORMAT)
    path.write_bytes(path.read_bytes()[:512 + 1024 + 200])
    with pytest.raises(InputError, match="truncated tar: file ends at byte 1736 inside or before the header at byte 1536"):
        read_tar(path)


@pytest.mark.parametrize("block", [512, 4096, 1 << 20])
def test_digest_covers_every_byte_whatever_the_block_size(tmp_path, monkeypatch, block):
    """Members larger than the block are skipped by the walk but still hashed, and so are the bytes after
    the end-of-archive marker; the digest is the file's, as ``file_digest`` computes it."""
    members = [(f"k{i}.{ext}", os.urandom(n)) for i, n in enumerate([0, 700, 5000, 70_000, 3])
               for ext in ("jpg", "json")]
    path = tmp_path / "t.tar"
    _write_tar(path, members)
    with open(path, "ab") as f:
        f.write(os.urandom(3000))  # trailing bytes: part of the file, so part of its digest
    monkeypatch.setattr(tar_io, "READ_BLOCK", block)
    index = index_tar(path, capture=lambda name: name.endswith(".json"), digest=True)
    want = xxhash.xxh3_128(path.read_bytes()).hexdigest()
    assert index.digest == want and file_digest(path) == (path.stat().st_size, want)
    assert index.file_size == path.stat().st_size
    assert [bytes(index.captured[o]) for n, o in zip(index.names, index.data_offsets, strict=True) if n.endswith(".json")] == \
        [d for n, d in members if n.endswith(".json")]
    assert index_tar(path).digest is None
