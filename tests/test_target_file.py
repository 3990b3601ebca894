"""image_based(target=...): DataComp's ImageNet-1k target files (``in1k_clip_vit_l14_{0..4}.pt``, each
``torch.save({"image_features": tensor})``) are read without running code, from a folder, a glob, a list
or one file, equal to what torch's own loader reads; a target file carrying a pickle payload is refused
and the payload never runs (the same bytes do run it under a plain unpickler: the test can fail)."""

from __future__ import annotations

import collections
import io
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from embedding_pool import build_embedding_pool, make_pool
from test_centroid_file import Payload

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.core.uids import UidSet
from poolsieve.filters import _target_file
from poolsieve.filters._target_file import read_target_files, target_files
from poolsieve.filters.image_based import _caption_mask
from poolsieve.filters.registry import get_filter
from poolsieve.filters.spec import parse_expression

torch = pytest.importorskip("torch")


def datacomp_targets(folder: Path, dim: int = 16, rows=(5, 7, 3, 6, 4), seed: int = 0) -> list[Path]:
    """Five target files as DataComp wrote them, with the tensor layouts torch.save can leave: half and
    float, a slice of a larger storage, a transposed (non-contiguous) view, bfloat16."""
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(exist_ok=True)
    paths = []
    for i, n in enumerate(rows):
        x = torch.randn(n + 4, dim, generator=g)
        x = {0: x[:n].half(), 1: x[2:n + 2], 2: x[:dim].T.contiguous()[:, :n].T.half(), 3: x[:n].bfloat16(),
             4: x[1:n + 1].half()}[i]
        paths.append(folder / f"in1k_clip_vit_l14_{i}.pt")
        torch.save({"image_features": x}, paths[-1])
    return paths


def torch_reads(paths: list[Path]) -> np.ndarray:
    """What DataComp's own code concatenates (torch's loader, weights only), widened to float32."""
    return torch.cat([torch.load(p, weights_only=True)["image_features"].float() for p in paths]).numpy()


def test_folder_glob_list_and_file_read_what_torch_reads(tmp_path):
    paths = datacomp_targets(tmp_path / "assets")
    assert not torch.load(paths[2])["image_features"].is_contiguous()
    expected = torch_reads(paths)
    for target in (f"{tmp_path}/assets/", f"{tmp_path}/assets/in1k_clip_vit_l14_*.pt",
                   [str(p) for p in paths]):
        files = target_files(target)
        assert files == paths
        got = read_target_files(files)
        assert got.dtype == np.float32 and np.array_equal(got, expected)  # mixed dtypes: float32
    one = read_target_files(target_files(str(paths[0])))
    assert one.dtype == np.float16 and np.array_equal(one, torch.load(paths[0])["image_features"].numpy())
    assert target_files("imagenet") is None and target_files("x/target.npz") is None  # reference sets


def test_glob_order_counts_numbers_and_a_folder_needs_all_five(tmp_path):
    for i in (10, 9, 1):
        torch.save({"image_features": torch.full((1, 4), float(i))}, tmp_path / f"part_{i}.pt")
    files = target_files(str(tmp_path / "part_*.pt"))
    assert [p.name for p in files] == ["part_1.pt", "part_9.pt", "part_10.pt"]
    assert read_target_files(files)[:, 0].tolist() == [1, 9, 10]
    datacomp_targets(tmp_path / "assets")
    (tmp_path / "assets" / "in1k_clip_vit_l14_3.pt").unlink()
    with pytest.raises(InputError, match=r"assets: lacks in1k_clip_vit_l14_3.pt of DataComp's target files "):
        target_files(f"{tmp_path}/assets/")
    with pytest.raises(InputError, match="holds none of DataComp's target files"):
        target_files(f"{tmp_path}/")
    with pytest.raises(InputError, match="matches no file"):
        target_files(f"{tmp_path}/nothing_*.pt")
    with pytest.raises(ConfigError, match="target list"):
        target_files([])


def payload_target(path: Path, marker: Path) -> Path:
    """A target file in DataComp's format whose pickle also carries ``Payload``."""
    torch.save({"extra": Payload(marker), "image_features": torch.ones(3, 16)}, path)
    return path


def test_a_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = payload_target(tmp_path / "in1k_clip_vit_l14_0.pt", marker)
    with pytest.raises(InputError, match=r"in1k_clip_vit_l14_0.pt: is not a plain target array: its pickle names "):
        read_target_files([path])
    assert not marker.exists()
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    with pytest.raises(pickle.UnpicklingError):  # the payload runs first, then torch's storages stop it
        pickle.loads(data)
    assert marker.read_text() == "the payload ran"


class _Rebuilt:
    """Pickles as ``_rebuild_tensor_v2`` over ``storage`` with the given view (what a tampered file may say)."""

    def __init__(self, storage, offset, shape, stride, hooks=None):
        self.args = (storage, offset, shape, stride, False, hooks if hooks is not None else collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


def test_other_contents_are_refused_in_one_line(tmp_path):
    small = torch.arange(12, dtype=torch.float32)
    with warnings.catch_warnings():  # TypedStorage is deprecated; it is what torch.save writes for a tensor
        warnings.simplefilter("ignore")
        storage = small.storage()
    cases = {
        "past_storage.pt": lambda p: torch.save({"image_features": _Rebuilt(storage, 0, (100, 100), (100, 1))}, p),
        "offset_past.pt": lambda p: torch.save({"image_features": _Rebuilt(storage, 9, (2, 2), (2, 1))}, p),
        "negative_stride.pt": lambda p: torch.save({"image_features": _Rebuilt(storage, 4, (2, 2), (-2, 1))}, p),
        "hooks.pt": lambda p: torch.save({"image_features": _Rebuilt(storage, 0, (2, 2), (2, 1), {1: 2})}, p),
        "ints.pt": lambda p: torch.save({"image_features": torch.ones(2, 3, dtype=torch.int32)}, p),
        "parameter.pt": lambda p: torch.save({"image_features": torch.nn.Parameter(torch.ones(2, 3))}, p),
        "no_features.pt": lambda p: torch.save({"features": torch.ones(2, 3)}, p),
        "a_list.pt": lambda p: torch.save([torch.ones(2, 3)], p),
        "flat.pt": lambda p: torch.save({"image_features": torch.ones(6)}, p),
        "nan.pt": lambda p: torch.save({"image_features": torch.full((2, 3), float("nan"))}, p),
        "target.npz": lambda p: np.savez(p, image_features=np.ones((2, 3), np.float32)),
        "truncated.pt": lambda p: p.write_bytes(_torch_bytes(torch.ones(64, 16))[:-300]),
        "junk.pt": lambda p: p.write_bytes(b"\x80\x02not a pickle"),
    }
    for name, write in cases.items():
        write(tmp_path / name)
        with pytest.raises(InputError) as e:
            read_target_files([tmp_path / name])
        assert "\n" not in str(e.value) and name in str(e.value), name
    torch.save({"image_features": torch.ones(2, 8)}, tmp_path / "narrow.pt")
    torch.save({"image_features": torch.ones(2, 16)}, tmp_path / "wide.pt")
    with pytest.raises(InputError, match="narrow.pt: holds 8-d image features but .*wide.pt holds 16-d"):
        read_target_files([tmp_path / "wide.pt", tmp_path / "narrow.pt"])


def _torch_bytes(obj) -> bytes:
    out = io.BytesIO()
    torch.save(obj, out)
    return out.getvalue()


def test_a_zip_that_unpacks_past_the_cap_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(_target_file, "MAX_BYTES", 1 << 20)
    real = zipfile.ZipFile(io.BytesIO(_torch_bytes({"image_features": torch.ones(2, 2)})))
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w") as z:
        for name in real.namelist():
            z.writestr(name, real.read(name))
        z.writestr("archive/data/1", bytes(8 << 20), compress_type=zipfile.ZIP_DEFLATED)  # 8 MiB in ~8 KiB
    assert path.stat().st_size < 1 << 20
    with pytest.raises(InputError, match="bomb.pt: unpacks to more than the 1,048,576 bytes"):
        read_target_files([path])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return build_embedding_pool(tmp_path_factory.mktemp("targets_ws"))


def test_image_based_with_datacomps_files_assigns_as_datacomp_does(workspace, tmp_path, monkeypatch):
    pool = make_pool(workspace)
    paths = datacomp_targets(tmp_path / "assets", rows=(2, 1, 2, 1, 1), seed=4)
    centroids = np.random.default_rng(3).standard_normal((9, 16)).astype(np.float32)
    torch.save(centroids, tmp_path / "small_centroids.pt")
    run = get_filter("image_based")
    got = run(pool, target=f"{tmp_path}/assets/", centroids=str(tmp_path / "small_centroids.pt"), device="cpu")
    # the same assignment computed here, as DataComp's code does it: torch's loader, largest inner product
    target_clusters = np.unique((torch_reads(paths) @ centroids.T).argmax(1))
    emb = pool.load_embeddings(["b32_img"])["b32_img"].astype(np.float32)
    caption = np.concatenate([_caption_mask(t, True, "en") for t in pool.tables])
    keep = caption & np.isin((emb @ centroids.T).argmax(1), target_clusters)
    uids = pool.read_columns([])["uid"].to_numpy()
    assert got == UidSet.from_hex(uids[keep]) and 0 < len(got) < caption.sum()
    assert run(pool, target=[str(p) for p in reversed(paths)], centroids=str(tmp_path / "small_centroids.pt"),
               device="cpu") == got  # the union of target clusters does not depend on the files' order
    torch.save({"image_features": torch.ones(3, 768)}, tmp_path / "l14.pt")
    with pytest.raises(InputError, match=r"768-d image features, but the pool's b32_img embeddings are 16-d"):
        run(pool, target=str(tmp_path / "l14.pt"), device="cpu")
    (tmp_path / "assets_bare").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="given as a path: ./assets_bare"):
        run(pool, target="assets_bare", device="cpu")


def test_the_expression_syntax_takes_a_folder_glob_and_list():
    node = parse_expression("image_based(target=[/data/a/in1k_clip_vit_l14_0.pt, /data/b.pt], "
                            "centroids=/data/small_centroids.pt)")
    assert node["params"]["target"] == ["/data/a/in1k_clip_vit_l14_0.pt", "/data/b.pt"]
    node = parse_expression("image_based(target=/data/assets/in1k_clip_vit_l14_*.pt)")
    assert node["params"]["target"] == "/data/assets/in1k_clip_vit_l14_*.pt"
