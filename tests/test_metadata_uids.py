"""uids are checked when metadata enters the workspace (issue 13, finding 9): ``download`` from a local
folder or from files put in ``metadata/``, and ``score --import-datacomp``. A uid is a string of 32
lowercase hex characters, unique in the pool; repeats are refused, or dropped and counted when asked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from poolsieve.core.errors import InputError
from poolsieve.core.runtime import Runtime
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.download.stage import DownloadConfig, download
from poolsieve.pipeline.score.datacomp_import import import_datacomp

UIDS = [f"{i:032x}" for i in range(0xABC0, 0xABCA)]  # with letters, so .upper() changes them


def _write(folder: Path, name: str, uids: list, npz: bool = False) -> Path:
    """A metadata parquet (and a row-aligned npz whose rows hold the row's uid as a number)."""
    folder.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame({"uid": uids, "url": [f"http://127.0.0.1:1/{i}.jpg" for i in range(len(uids))],
                       "text": [f"caption {i}" for i in range(len(uids))]})
    df.to_parquet(folder / f"{name}.parquet", index=False)
    if npz:
        tag = np.array([[int(str(u), 16) % 1000] * 4 for u in uids], dtype=np.float16)
        np.savez(folder / f"{name}.npz", b32_img=tag, b32_txt=tag)
    return folder / f"{name}.parquet"


def _fetch(ws_root: Path, src: Path, **kw) -> dict:
    cfg = DownloadConfig(metadata_source=str(src), skip_shards=True, **kw)
    return download(Workspace.create(ws_root), cfg, Runtime(executor="local"))


@pytest.mark.parametrize(("uids", "problem"), [
    ([100 + i for i in range(5)], r"a\.parquet: column uid has type int64 \(row 0: 100\); a uid is a string"),
    ([*UIDS[:2], UIDS[2].upper(), *UIDS[3:5]], rf"a\.parquet: bad uid '{UIDS[2].upper()}' at row 2: a uid is 32 lowercase"),
    ([*UIDS[:3], UIDS[3][:31], UIDS[4]], r"a\.parquet: bad uid '[0-9a-f]{31}' at row 3"),
])
def test_bad_uids_are_refused_before_they_enter(tmp_path: Path, uids: list, problem: str) -> None:
    _write(tmp_path / "src", "a", uids)
    with pytest.raises(InputError, match=problem):
        _fetch(tmp_path / "ws", tmp_path / "src")
    assert not list((tmp_path / "ws" / "metadata").glob("*.parquet"))  # nothing placed
    # The same file put into metadata/ by hand is refused by download too.
    _write(tmp_path / "ws" / "metadata", "a", uids)
    with pytest.raises(InputError, match=problem):
        download(Workspace.open(tmp_path / "ws"), DownloadConfig(skip_shards=True), Runtime(executor="local"))


def test_repeated_uids_are_refused_naming_file_and_rows_or_dropped(tmp_path: Path, capsys) -> None:
    from poolsieve.pipeline.cli import main

    src = tmp_path / "src"
    _write(src, "a", [*UIDS[:4], UIDS[0]], npz=True)  # row 4 repeats row 0
    _write(src, "b", [*UIDS[5:8], UIDS[1], UIDS[8]], npz=True)  # row 3 repeats a.parquet's row 1
    with pytest.raises(InputError, match=rf"a\.parquet: uid {UIDS[0]} at row 4 repeats row 0 \(2 repeated row"):
        _fetch(tmp_path / "ws", src)
    _write(src, "a", UIDS[:4], npz=True)
    with pytest.raises(InputError, match=rf"b\.parquet: uid {UIDS[1]} at row 3 repeats row 1 of .*a\.parquet"):
        _fetch(tmp_path / "ws", src)

    _write(src, "a", [*UIDS[:4], UIDS[0]], npz=True)
    ws = tmp_path / "ws2"
    assert main(["download", "-w", str(ws), "--metadata-source", str(src), "--skip-shards", "--download-npz",
                 "--drop-duplicate-uids", "--executor", "local"]) == 0
    assert "dropped 2 row(s) whose uid repeats an earlier row" in capsys.readouterr().err
    a, b = (pd.read_parquet(ws / "metadata" / f"{n}.parquet") for n in "ab")
    assert list(a["uid"]) == UIDS[:4] and list(b["uid"]) == [*UIDS[5:8], UIDS[8]]
    assert list(b["text"]) == ["caption 0", "caption 1", "caption 2", "caption 4"]
    with np.load(ws / "metadata" / "b.npz") as z:  # the embeddings lose the same rows
        assert z["b32_img"][:, 0].tolist() == [int(u, 16) % 1000 for u in b["uid"]]
    assert len(pd.read_parquet(src / "a.parquet")) == 5  # the source is left as it was


def _datacomp_source(folder: Path, parts: dict[str, list]) -> Path:
    for name, uids in parts.items():
        _write(folder, name, uids, npz=True)
    return folder


def test_import_datacomp_checks_uids(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path / "ws")
    run = Runtime(executor="local")
    bad = _datacomp_source(tmp_path / "upper", {"a": [UIDS[0].upper(), *UIDS[1:3]]})
    with pytest.raises(InputError, match=rf"a\.parquet: bad uid '{UIDS[0].upper()}' at row 0"):
        import_datacomp(ws, bad, run, language=False)
    ints = _datacomp_source(tmp_path / "ints", {"a": [1, 2, 3]})
    with pytest.raises(InputError, match=r"a\.parquet: column uid has type int64"):
        import_datacomp(ws, ints, run, language=False)
    dup = _datacomp_source(tmp_path / "dup", {"a": UIDS[:3], "b": [UIDS[3], UIDS[2], UIDS[4]]})
    with pytest.raises(InputError, match=rf"b\.parquet: uid {UIDS[2]} at row 1 repeats row 2 of .*a\.parquet"):
        import_datacomp(ws, dup, run, language=False)
    assert not ws.scores_dir.exists() or not list(ws.scores_dir.glob("*.parquet"))

    summary = import_datacomp(ws, dup, run, language=False, drop_duplicate_uids=True)
    assert summary["repeated uids dropped"] == 1 and summary["rows kept"] == 5
    b = pd.read_parquet(ws.score_table_path("b"))
    assert list(b["uid"]) == [UIDS[3], UIDS[4]]
    with np.load(ws.embeddings_path("b")) as z:
        assert z["b32_img"][:, 0].tolist() == [int(u, 16) % 1000 for u in b["uid"]]
