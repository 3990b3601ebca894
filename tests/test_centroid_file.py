"""image_based(centroids=...): DataComp's released centroid file (a torch.save'd numpy array) and plain
arrays are read without running code; a file carrying a pickle payload is refused and the payload never
runs (the same bytes do run it under a plain unpickler: the test can fail)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from embedding_pool import build_embedding_pool, make_pool

from poolsieve.core.errors import InputError
from poolsieve.filters._centroid_file import read_centroids
from poolsieve.filters.image_based import _caption_mask
from poolsieve.filters.registry import get_filter


class Payload:
    """Unpickling this writes a marker file (``os.system`` would do anything else)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "the payload ran"))


def payload_file(path: Path, marker: Path, torch_zip: bool) -> Path:
    """A centroid file whose pickle carries ``Payload`` beside a real array (DataComp's format when zipped)."""
    obj = (np.ones((4, 16), np.float32), Payload(marker))
    if torch_zip:
        import torch

        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return build_embedding_pool(tmp_path_factory.mktemp("centroids_ws"))


def test_datacomps_format_a_pickle_and_npy_are_read(tmp_path):
    import torch

    c = np.random.default_rng(0).standard_normal((7, 16)).astype(np.float32)
    torch.save(c, tmp_path / "small_centroids")  # how DataComp wrote its released file
    torch.save(torch.from_numpy(c), tmp_path / "tensor.pt")  # a float tensor, read without torch
    (tmp_path / "c.pkl").write_bytes(pickle.dumps(c, protocol=2).replace(b"numpy._core", b"numpy.core"))  # numpy 1
    np.save(tmp_path / "c.npy", c.astype(np.float64))
    for name in ("small_centroids", "tensor.pt", "c.pkl", "c.npy"):
        got = read_centroids(tmp_path / name)
        assert got.dtype == np.float32 and np.array_equal(got, c)


@pytest.mark.parametrize("torch_zip", [True, False])
def test_a_payload_is_refused_and_never_runs(tmp_path, torch_zip):
    marker = tmp_path / "ran"
    path = payload_file(tmp_path / "evil_centroids", marker, torch_zip)
    with pytest.raises(InputError, match=r"evil_centroids: is not a plain centroid array: its pickle names "):
        read_centroids(path)
    assert not marker.exists()
    data = path.read_bytes()
    if torch_zip:
        import io
        import zipfile

        with zipfile.ZipFile(io.BytesIO(data)) as z:
            data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    pickle.loads(data)  # what an unrestricted loader does with the same bytes
    assert marker.read_text() == "the payload ran"


def test_other_contents_are_refused_in_one_line(tmp_path):
    import torch

    cases = {
        "ints.pt": lambda p: torch.save(torch.ones(3, 4, dtype=torch.int64), p),
        "flat.pt": lambda p: torch.save(torch.ones(4), p),
        "dict.pt": lambda p: torch.save({"image_features": np.ones((2, 2), np.float32)}, p),
        "ints.npy": lambda p: np.save(p, np.ones((3, 4), np.int64)),
        "flat.npy": lambda p: np.save(p, np.ones(4, np.float32)),
        "nan.npy": lambda p: np.save(p, np.full((2, 2), np.nan, np.float32)),
        "objects.npy": lambda p: np.save(p, np.array([None, 1], dtype=object), allow_pickle=True),
        "junk": lambda p: p.write_bytes(b"\x80\x02not a pickle"),
    }
    for name, write in cases.items():
        write(tmp_path / name)
        with pytest.raises(InputError) as e:
            read_centroids(tmp_path / name)
        assert "\n" not in str(e.value) and name in str(e.value)


def test_image_based_with_centroids_assigns_as_datacomp_does(workspace, tmp_path):
    import torch

    pool = make_pool(workspace)
    centroids = np.random.default_rng(3).standard_normal((9, 16)).astype(np.float32)
    torch.save(centroids, tmp_path / "small_centroids")
    got = get_filter("image_based")(pool, target="target", centroids=str(tmp_path / "small_centroids"), device="cpu")
    # the same assignment computed here: largest inner product, targets' clusters, caption filter
    target = np.load(workspace / "references" / "target.npz")["b32_img"].astype(np.float32)
    target_clusters = np.unique((target @ centroids.T).argmax(1))
    emb = pool.load_embeddings(["b32_img"])["b32_img"].astype(np.float32)
    caption = np.concatenate([_caption_mask(t, True, "en") for t in pool.tables])
    keep = caption & np.isin((emb @ centroids.T).argmax(1), target_clusters)
    uids = pool.read_columns([])["uid"].to_numpy()
    from poolsieve.core.uids import UidSet

    assert got == UidSet.from_hex(uids[keep]) and 0 < len(got) < caption.sum()
    with pytest.raises(InputError, match="8-d"):
        np.save(tmp_path / "narrow.npy", centroids[:, :8])
        get_filter("image_based")(pool, target="target", centroids=str(tmp_path / "narrow.npy"), device="cpu")
    from poolsieve.core.errors import ConfigError

    with pytest.raises(ConfigError, match="replaces clusters"):
        get_filter("image_based")(pool, target="target", centroids=str(tmp_path / "small_centroids"), clusters=4)
