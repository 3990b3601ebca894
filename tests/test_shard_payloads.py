"""No shard or task-tar member ever runs code (issue 23, finding 1).

Every sample of the shards built here also carries ``KEY.pyd``, ``KEY.pickle`` and ``KEY.pth`` members
whose bytes are a pickle that, when loaded, writes a marker file (one per kind). webdataset's default
decoder unpickles the first two and ``torch.load``-s the third with ``weights_only=False``, so the
marker appears; ``test_default_decoders_run_the_payload`` shows that in a fresh process (the guard
removed), so the tests that assert the marker never appears can fail. Through the CLI: ``reshard``
(leaves those members out and counts them), ``train`` on the resharded subset and on the payload
shards themselves (open_clip's loader, in its own process and data-loader worker), and ``evaluate
--tasks FOLDER`` (clip_benchmark's loader) on a task folder with the same members.
"""

from __future__ import annotations

import io
import json
import pathlib
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from factories import make_samples

from poolsieve.core.formats import write_subset
from poolsieve.core.uids import uids_to_pairs
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline import cli

PAYLOAD_KINDS = ("pyd", "pickle", "pth")


class _Payload:
    """Unpickling it writes ``marker``: what a hostile shard's member would do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(self.marker), "code from a shard member ran\n"))


def payload(marker: Path) -> bytes:
    return pickle.dumps(_Payload(marker), protocol=4)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _payload_members(tar: tarfile.TarFile, key: str, markers: Path, kinds: tuple[str, ...] = PAYLOAD_KINDS) -> None:
    for kind in kinds:
        _add(tar, f"{key}.{kind}", payload(markers / f"{kind}.ran"))


def write_payload_shards(folder: Path, n: int, markers: Path, *, seed: int,
                         kinds: tuple[str, ...] = PAYLOAD_KINDS) -> list:
    """img2dataset-style shards (jpg, txt, json + the payload members) and their ``_stats.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = make_samples(n, seed=seed, image_size=32)
    for shard, lo in enumerate(range(0, n, 20)):
        name = f"{shard:05d}"
        with tarfile.open(folder / f"{name}.tar", "w") as tar:
            for i, s in enumerate(samples[lo:lo + 20]):
                key = f"{name}{i:04d}"
                _add(tar, f"{key}.jpg", s.jpeg)
                _payload_members(tar, key, markers, kinds)
                _add(tar, f"{key}.txt", s.caption.encode())
                _add(tar, f"{key}.json", json.dumps({"uid": s.uid, "key": key}).encode())
        (folder / f"{name}_stats.json").write_text(json.dumps({"successes": len(samples[lo:lo + 20])}))
    return samples


def write_payload_task(folder: Path, n: int, markers: Path, kinds: tuple[str, ...] = PAYLOAD_KINDS) -> None:
    """A classification task in clip_benchmark's layout whose samples carry the payload members."""
    (folder / "test").mkdir(parents=True)
    samples = make_samples(n, seed=11, image_size=32)
    with tarfile.open(folder / "test" / "0.tar", "w") as tar:
        for i, s in enumerate(samples):
            _add(tar, f"s{i:05d}.jpg", s.jpeg)
            _add(tar, f"s{i:05d}.cls", str(i % 2).encode())
            _payload_members(tar, f"s{i:05d}", markers, kinds)
    (folder / "test" / "nshards.txt").write_text("1\n")
    (folder / "classnames.txt").write_text("red\nblue\n")
    (folder / "zeroshot_classification_templates.txt").write_text("a photo of a {c} thing.\n")


def ran(markers: Path) -> list[str]:
    return sorted(p.name for p in markers.glob("*.ran"))


def test_safe_decoding_never_unpickles(tmp_path):
    """webdataset's own pipeline (the ``.decode()`` clip_benchmark and poolsieve's eval use, and ``wds.decode``
    that open_clip uses) after ``install_safe_decoding``: allowed kinds decoded, the rest left as bytes."""
    import webdataset as wds

    from poolsieve.core.safe_decoding import decode_member, install_safe_decoding

    markers = tmp_path / "markers"
    markers.mkdir()
    obj_array = io.BytesIO()
    np.save(obj_array, np.array([_Payload(markers / "npy.ran")], dtype=object), allow_pickle=True)
    with tarfile.open(tmp_path / "0.tar", "w") as tar:
        for name, data in (("k.jpg", make_samples(1, seed=2)[0].jpeg), ("k.txt", b"a caption"),
                           ("k.json", b'{"uid": "x"}'), ("k.cls", b"3"), ("k.npy", _npy([1, 2])),
                           ("k.seg.pyd", payload(markers / "seg.ran")), ("k.txt.gz", b"not gzip")):
            _add(tar, name, data)
        _payload_members(tar, "k", markers)
    install_safe_decoding()
    for dataset in (wds.WebDataset(str(tmp_path / "0.tar"), shardshuffle=False, empty_check=False).decode("pil"),
                    wds.DataPipeline(wds.SimpleShardList(str(tmp_path / "0.tar")), wds.tarfile_to_samples(),
                                     wds.decode("pilrgb"))):
        (sample,) = list(dataset)
        assert sample["jpg"].size == (32, 32) and sample["txt"] == "a caption" and sample["json"] == {"uid": "x"}
        assert sample["cls"] == 3 and sample["npy"].tolist() == [1, 2]
        assert all(isinstance(sample[k], bytes) for k in (*PAYLOAD_KINDS, "seg.pyd", "txt.gz"))
    with pytest.raises(ValueError, match="allow_pickle"):
        decode_member("npy", obj_array.getvalue())
    assert ran(markers) == []


def _npy(values) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(values))
    return buf.getvalue()


CONTROL = """
import sys, webdataset as wds
from clip_benchmark.datasets.builder import build_wds_dataset
for _ in wds.WebDataset(sys.argv[1], shardshuffle=False, empty_check=False).decode(handler=wds.ignore_and_continue):
    pass
try:
    list(build_wds_dataset("payload", transform=None, split="test", data_dir=sys.argv[2]))
except Exception:  # the .pth member's torch.load fails, after its payload ran
    pass
"""


@pytest.mark.subprocess
def test_default_decoders_run_the_payload(tmp_path):
    """The guard removed (a fresh process, webdataset's and clip_benchmark's defaults): the payload runs."""
    markers, task_markers = tmp_path / "markers", tmp_path / "task_markers"
    markers.mkdir()
    task_markers.mkdir()
    write_payload_shards(tmp_path / "shards", 2, markers, seed=1)
    write_payload_task(tmp_path / "task", 2, task_markers)
    subprocess.run([sys.executable, "-c", CONTROL, str(tmp_path / "shards" / "00000.tar"), str(tmp_path / "task")],
                   check=True, capture_output=True, timeout=300)
    assert ran(markers) == [f"{kind}.ran" for kind in sorted(PAYLOAD_KINDS)]
    assert ran(task_markers) == [f"{kind}.ran" for kind in sorted(PAYLOAD_KINDS)]


@pytest.mark.train
def test_reshard_then_train_never_runs_a_member(tmp_path, capsys):
    markers = tmp_path / "markers"
    markers.mkdir()
    ws = Workspace.create(tmp_path / "ws")
    samples = write_payload_shards(ws.shards_dir, 60, markers, seed=4)
    write_subset(ws.subset_path("all"), uids_to_pairs(sorted(s.uid for s in samples)))
    assert cli.main(["reshard", "-w", str(ws.root), "--executor", "local", "--subset", "all", "--shard-size", "25"]) == 0
    out = capsys.readouterr().out
    assert "members not copied" in out and ".pyd x60" in out and ".pth x60" in out and ".pickle x60" in out
    meta = json.loads((ws.filtered_dir("all") / "meta.json").read_text())
    assert meta["skipped_member_kinds"] == {"pickle": 60, "pth": 60, "pyd": 60} and meta["output_count"] == 60
    for tar in sorted(ws.filtered_dir("all").glob("*.tar")):
        with tarfile.open(tar) as tf:
            assert {n.rsplit(".", 1)[1] for n in tf.getnames()} == {"jpg", "txt", "json"}

    train = ["train", "-w", str(ws.root), "--executor", "local", "--samples-seen", "64", "--batch-size", "16",
             "--threads", "1", "--workers", "1", "--num-checkpoints", "1"]
    assert cli.main([*train, "--subset", "all"]) == 0
    # The loader's own guard: payload shards trained on as they are (never resharded), decoded in open_clip's
    # data-loader worker. (Their members are .pyd and .pickle: with the guard removed training then runs to
    # the end with the marker written; a .pth member that fails to load makes open_clip skip every sample.)
    write_payload_shards(tmp_path / "raw_shards", 40, markers, seed=5, kinds=("pyd", "pickle"))
    assert cli.main([*train, "--data", str(tmp_path / "raw_shards"), "--output", str(ws.run_dir("raw"))]) == 0
    assert json.loads((ws.run_dir("raw") / "summary.json").read_text())["samples_seen"] == 64
    assert ran(markers) == []


def test_evaluate_task_folder_never_runs_a_member(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    write_payload_task(tmp_path / "payload_task", 12, markers, kinds=("pyd",))
    args = ["evaluate", "-w", str(tmp_path / "ws"), "--executor", "local", "--model", "poolsieve-tiny",
            "--tasks", str(tmp_path / "payload_task"), "--batch-size", "4"]
    assert cli.main(args) == 0
    line = json.loads((tmp_path / "ws" / "evals" / "poolsieve-tiny" / "other_results.jsonl").read_text())
    assert line["key"] == "custom/payload_task" and 0 <= line["metrics"]["acc1"] <= 1
    assert ran(markers) == []
