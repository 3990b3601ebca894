"""core/names.py (the one rule for user-given names) and core/untrusted_files.py (opening files of a
workspace that may be someone else's: symlinks, FIFOs, folders)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.names import check_name, is_valid_name
from poolsieve.core.untrusted_files import open_no_follow, open_regular, regular_file_size


@pytest.mark.parametrize("name", ["clip30", "basic_clip30", "a.b-c", "_x", "9", "x" * 128])
def test_datacomp_safe_names_pass(name: str) -> None:
    assert is_valid_name(name) and check_name(name, "subset name") == name


@pytest.mark.parametrize("name", ["", ".hidden", "..", "a/b", "a b", "x\n", "\x1b[31mred", "é", "x" * 129, 7, None])
def test_other_names_are_refused_in_one_escaped_line(name: object) -> None:
    assert not is_valid_name(name)
    with pytest.raises(ConfigError, match="^subset name .* is not allowed") as error:
        check_name(name, "subset name")
    assert "\n" not in str(error.value) and "\x1b" not in str(error.value) and len(str(error.value)) < 300


def test_input_files_must_be_regular_files(tmp_path: Path) -> None:
    data = tmp_path / "table.parquet"
    data.write_bytes(b"12345")
    link = tmp_path / "link.parquet"
    link.symlink_to(data)
    with open_regular(link) as f:  # a pool on another disk: the link is followed
        assert f.read() == b"12345"
    assert regular_file_size(data) == 5
    fifo = tmp_path / "fifo.parquet"
    os.mkfifo(fifo)  # opened non-blocking: refused at once, never waited on
    for path, kind in ((fifo, "a FIFO"), (tmp_path, "a folder")):
        with pytest.raises(InputError, match=f"is {kind}, not a regular file"):
            open_regular(path)
        with pytest.raises(InputError, match=f"is {kind}"):
            regular_file_size(path)
    with pytest.raises(InputError, match="does not exist"):
        open_regular(tmp_path / "nope")


def test_files_poolsieve_writes_are_never_opened_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep")
    planted = tmp_path / ".lock"
    planted.symlink_to(target)
    with pytest.raises(InputError, match="is a symlink"):
        open_no_follow(planted)
    assert target.read_text() == "keep"
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InputError, match="is a FIFO"):
        open_no_follow(tmp_path / "fifo")
    fd = open_no_follow(tmp_path / "new.lock")
    os.write(fd, b"pid")
    os.close(fd)
    assert (tmp_path / "new.lock").read_bytes() == b"pid"
