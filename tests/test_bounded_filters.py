"""The embedding filters in bounded memory: the same uids as the in-memory filters they replace
(``reference_filters``), however small the budget cuts their work; the pieces that bound memory
(budget sizes, npz rows, spill folders, the greedy selection over several workers)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import reference_filters as ref
from embedding_pool import build_embedding_pool, make_pool

from poolsieve.core.errors import ConfigError, InputError
from poolsieve.filters import _budget, d2_greedy, dedup, semdedup
from poolsieve.filters._npz import NpzRows
from poolsieve.filters._spill import PREFIX, DiskArray, spill_folder
from poolsieve.filters.d2_pruning import d2_select
from poolsieve.filters.knn import sharded
from poolsieve.filters.registry import get_filter


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return build_embedding_pool(tmp_path_factory.mktemp("bounded_ws"))


@pytest.fixture
def small_pieces(monkeypatch):
    """Cut every filter's work into the smallest pieces: several search units, one cluster per dedup
    task, many hash buckets, tiny greedy rounds and forward-message tasks."""
    monkeypatch.setattr(sharded, "search_rows", lambda budget: 97)
    monkeypatch.setattr(semdedup, "BUCKET_SHARE", 1e-9)
    monkeypatch.setattr(dedup, "BUCKET_ROW_BYTES", 2**30)
    monkeypatch.setattr(d2_greedy, "FIRST_BATCH", 2)
    monkeypatch.setattr(d2_greedy, "MIN_BATCH", 1)
    monkeypatch.setattr(d2_greedy, "MAX_BATCH", 8)
    monkeypatch.setattr(d2_greedy, "FORWARD_ROWS", 50)


# --------------------------------------------------------------------------- same uids as before
@pytest.mark.parametrize("params", [
    {"knn": "exact", "fraction": 0.4, "k": 4},
    {"knn": "ivf", "nlist": 8, "fraction": 0.3},
    {"knn": "ivf", "nlist": 6, "features": "image", "count": 120, "gamma_forward": 2.0, "gamma_reverse": 0.5},
])
@pytest.mark.parametrize("pieces", [False, True])
@pytest.mark.parametrize("index", ["memory", "files"])
def test_d2_selects_what_the_in_memory_d2_selects(workspace, request, monkeypatch, params, pieces, index):
    """The index built in this process's memory (in-process executor, an index within the budget) and
    the one written to the spill folder and read from disk give the reference's graph and selection."""
    if pieces:
        request.getfixturevalue("small_pieces")
    if index == "files":
        monkeypatch.setattr(sharded, "INDEX_SHARE", 0.0)  # no index is small enough to be held in memory
    built = []

    def recorded(name: str):
        build = getattr(sharded, name)
        return lambda *args: built.append(name) or build(*args)

    for name in ("_write_indexes", "_indexes_in_memory"):
        monkeypatch.setattr(sharded, name, recorded(name))
    pool = make_pool(workspace, memory_budget="64MiB")
    got = d2_select(pool, {**params, "device": "cpu"}, graph_rows=np.arange(497))
    assert built == ["_indexes_in_memory" if index == "memory" else "_write_indexes"]
    uids, order, neighbors, distances = ref.d2(pool, **params)
    assert np.array_equal(got.neighbors, neighbors)
    np.testing.assert_array_equal(got.distances, distances)
    assert np.array_equal(got.order, order) and got.uids == uids
    assert not list(workspace.glob(f"{PREFIX}*"))


@pytest.mark.parametrize("params", [
    {"eps": 0.15, "clusters": 4},
    {"eps": 0.2, "clusters": 6, "order": "easy", "against": "any", "features": "image+text"},
    {"eps": 0.3, "clusters": 5, "order": "random", "sample_ratio": 0.5, "seed": 3},
    {"eps": 0.05},
])
def test_semdedup_keeps_what_the_in_memory_semdedup_keeps(workspace, small_pieces, params):
    pool = make_pool(workspace, memory_budget="64MiB")
    assert get_filter("semdedup")(pool, device="cpu", **params) == ref.semdedup(pool, **params)


@pytest.mark.parametrize("by", [["sha256", "uid"], ["uid"], ["sha256"]])
@pytest.mark.parametrize("pieces", [False, True])
def test_exact_dedup_keeps_what_the_in_memory_dedup_keeps(workspace, request, by, pieces):
    if pieces:
        request.getfixturevalue("small_pieces")
    pool = make_pool(workspace)
    assert get_filter("dedup")(pool, by=by) == ref.exact_dedup(pool, by)


@pytest.mark.parametrize("params", [
    {"clusters": 6, "iterations": 10},
    {"clusters": 5, "sample_ratio": 0.5, "seed": 4},
    {"caption_filter": False, "clusters": 8},
])
def test_image_based_keeps_what_the_in_memory_filter_keeps(workspace, params):
    pool = make_pool(workspace, memory_budget="64MiB")
    assert get_filter("image_based")(pool, target="target", device="cpu", **params) == \
        ref.image_based(pool, target="target", **params)


def test_a_sample_over_the_budget_is_cut_with_a_warning(workspace, monkeypatch):
    from poolsieve.core.errors import PoolsieveWarning

    monkeypatch.setattr(semdedup, "SAMPLE_SHARE", 1e-9)  # room for no more than k rows
    pool = make_pool(workspace, memory_budget="64MiB")
    with pytest.warns(PoolsieveWarning, match=r"SemDeDup's k-means trains on 4 of its 497 sample rows"):
        res = semdedup.semdedup_run(pool, eps=0.15, clusters=4, device="cpu")
    assert res["sample_rows"] == 497 and len(res["uids"]) > 0


def test_d2_trains_each_part_on_its_own_float32_sample(workspace, monkeypatch):
    """The IVF training sample is gathered one embedding at a time, straight into float32 (4 bytes per
    value of one part), and cut to what fits; its values are the float16 embeddings' own."""
    from poolsieve.core.errors import PoolsieveWarning
    from poolsieve.filters._embeddings import gather_rows, row_counts

    pool = make_pool(workspace, memory_budget="64MiB")
    width = np.load(Path(pool.tables[0]).with_suffix(".npz"))["b32_img"].shape[1]
    monkeypatch.setattr(sharded, "SAMPLE_SHARE", 150 * 4 * width / pool.budget)  # room for 150 rows of one part
    samples = []
    train = sharded.train_lists
    monkeypatch.setattr(sharded, "train_lists", lambda x, *a, **kw: samples.append(x.copy()) or train(x, *a, **kw))
    with pytest.warns(PoolsieveWarning, match=r"D2's IVF lists trains on 150 of its 320 sample rows"):
        d2_select(pool, {"fraction": 0.3, "knn": "ivf", "nlist": 8, "nprobe": 2, "device": "cpu"})
    assert [(x.dtype, x.shape) for x in samples] == [(np.dtype(np.float32), (150, width))] * 2
    both = gather_rows(pool, ["b32_img", "b32_txt"], row_counts(pool), np.arange(497)).astype(np.float32)
    for x, part in zip(samples, (both[:, :width], both[:, width:]), strict=True):  # each sample row is a pool row
        assert (np.abs(x[:, None, :] - part[None, :, :]).max(axis=2) == 0).any(axis=1).all()


# ------------------------------------------------------------------------------ greedy selection
@pytest.mark.parametrize("workers", [1, 3, 7])
def test_greedy_over_ranges_is_the_sequential_heap_row_for_row(tmp_path, monkeypatch, workers):
    """Random graphs with many equal values (ties broken by row) and rows that point at each other."""
    monkeypatch.setattr(d2_greedy, "MIN_BATCH", 1)
    rng = np.random.default_rng(workers)
    n, k = 400, 4
    neighbors = np.stack([rng.choice(np.delete(np.arange(n), i), k, replace=False) for i in range(n)])
    neighbors[::9, -1] = -1  # missing neighbours
    distances = rng.integers(0, 4, (n, k)).astype(np.float32) / 4
    distances[neighbors < 0] = np.inf
    g = rng.integers(0, 6, n).astype(np.float64)  # many ties
    for name, a in (("neighbors", neighbors), ("distances", distances), ("g", g)):
        np.save(tmp_path / f"{name}.npy", a)

    class Workers:  # what an actor pool offers, over plain objects
        def __init__(self, count):
            self.actors = [d2_greedy.GreedyRange(str(tmp_path), 0.7) for _ in range(count)]

        def __len__(self):
            return len(self.actors)

        def call_all(self, method, *args):
            return [getattr(a, method)(*args) for a in self.actors]

        def call_each(self, method, args):
            return [getattr(a, method)(arg) for a, arg in zip(self.actors, args, strict=True)]

    for n_select in (1, 150, n):
        got = d2_greedy.select(Workers(workers), n, n_select)
        assert np.array_equal(got, ref.greedy_heap(g, neighbors, distances, n_select, 0.7))


# --------------------------------------------------------------------------------------- pieces
def test_sizes_parse_and_the_default_budget_comes_from_the_machine():
    assert _budget.parse_size("2GiB") == 2 * 2**30
    assert _budget.parse_size("1.5 g") == 1_500_000_000
    assert _budget.parse_size("512MiB") == 512 * 2**20 and _budget.parse_size(3e9) == 3_000_000_000
    assert _budget.parse_size(None) is None
    for bad in ("lots", "2 GiBs", "-1GiB", "1KiB", True):
        with pytest.raises(ConfigError):
            _budget.parse_size(bad)
    assert _budget.default_budget() == max(_budget.MIN_BUDGET, _budget.machine_memory() // 4)
    assert make_pool(Path("/x/scores"), memory_budget="1GiB").budget == 2**30
    assert _budget.rows_within(2**20, 1024, share=0.5, least=3, most=100) == 100
    assert _budget.rows_within(2**20, 2**21, least=3) == 3


def test_npz_rows_read_as_numpy_does_and_refuse_what_is_not_an_array(tmp_path):
    a = np.arange(60, dtype=np.float16).reshape(20, 3)
    b = np.arange(20, dtype=np.int64)
    np.savez(tmp_path / "plain.npz", a=a, b=b)
    np.savez_compressed(tmp_path / "packed.npz", a=a, b=b)
    for name in ("plain.npz", "packed.npz"):
        z = NpzRows(tmp_path / name)
        assert z.names == ["a", "b"]
        assert np.array_equal(z.rows("a", 3, 9), a[3:9]) and np.array_equal(z.rows("b"), b)
        assert np.array_equal(z.take("a", np.array([7, 1, 7])), a[[7, 1, 7]])
        assert z.rows("a", 18, 40).shape == (2, 3)
    assert NpzRows(tmp_path / "plain.npz").members["a"].offset is not None  # read in place, not loaded
    np.savez(tmp_path / "objects.npz", o=np.array([{"x": 1}], dtype=object))
    with pytest.raises(InputError, match="object"):
        NpzRows(tmp_path / "objects.npz")
    # a member whose header claims more rows than it holds
    raw = (tmp_path / "plain.npz").read_bytes().replace(b"'shape': (20, 3)", b"'shape': (99, 3)")
    (tmp_path / "lying.npz").write_bytes(raw)
    with pytest.raises(InputError, match="larger than the member"):
        NpzRows(tmp_path / "lying.npz")
    os.mkfifo(tmp_path / "fifo.npz")
    with pytest.raises(InputError, match="FIFO"):
        NpzRows(tmp_path / "fifo.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(InputError, match="not a readable .npz"):
        NpzRows(tmp_path / "junk.npz")
    assert zipfile.is_zipfile(tmp_path / "plain.npz")


def test_disk_arrays_read_and_write_by_rows(tmp_path):
    arr = DiskArray.create(tmp_path / "a.npy", (10, 2), np.float32, fill=-1)
    arr.write(np.array([3, 1]), np.array([[1, 2], [3, 4]], np.float32))
    arr.write(slice(8, 10), np.zeros((2, 2), np.float32))
    full = np.load(tmp_path / "a.npy")
    assert np.array_equal(full[1], [3, 4]) and np.array_equal(full[3], [1, 2]) and (full[8:] == 0).all()
    assert np.array_equal(arr[2:5], full[2:5]) and np.array_equal(arr.take(np.array([[9], [1]])), full[[[9], [1]]])


def test_spill_folders_go_when_done_and_abandoned_ones_are_swept(tmp_path):
    from poolsieve.filters.registry import ScoredPool

    pool = ScoredPool([tmp_path / "scores" / "00000.parquet"])
    with pytest.raises(RuntimeError), spill_folder(pool, "x") as folder:
        assert folder.parent == tmp_path and folder.name.startswith(PREFIX)
        raise RuntimeError("a filter failed")
    assert not folder.exists()
    dead = tmp_path / f"{PREFIX}d2-dead"  # left by a killed run of this host
    dead.mkdir()
    import socket

    (dead / "owner.json").write_text(f'{{"host": "{socket.gethostname()}", "pid": 999999999}}')
    elsewhere = tmp_path / f"{PREFIX}d2-elsewhere"  # another host's: not ours to judge
    elsewhere.mkdir()
    (elsewhere / "owner.json").write_text('{"host": "another-host", "pid": 1}')
    with spill_folder(pool, "y"):
        pass
    assert not dead.exists() and elsewhere.exists()


def test_filter_command_takes_a_memory_budget_and_leaves_no_spill(tmp_path, capsys):
    from poolsieve.pipeline.cli import main

    root = build_embedding_pool(tmp_path / "ws")
    args = ["filter", "-w", str(root), "--executor", "local", "--spec", "d = d2_pruning(knn=exact, device=cpu)"]
    assert main([*args, "--memory-budget", "80MiB"]) == 0
    from poolsieve.core.formats import read_uidset

    assert read_uidset(root / "subsets" / "d.npy") == ref.d2(make_pool(root), knn="exact")[0]
    capsys.readouterr()
    assert main([*args, "--memory-budget", "lots", "--overwrite"]) == 2
    assert "memory budget must be a size" in capsys.readouterr().err
    assert not list(root.glob(f"{PREFIX}*"))


def test_budget_sized_ray_tasks_ask_for_cpus_by_memory(workspace, ray_runtime):
    """So many CPUs that the budgets of the tasks a node runs at once fit half its memory resource."""
    nodes = ray_runtime.node_resources()
    per_cpu = min(n["memory"] / n["CPU"] for n in nodes)
    most = int(min(n["CPU"] for n in nodes))
    assert _budget.task_cpus(make_pool(workspace, ray_runtime, memory_budget=int(per_cpu / 4))) == 1
    assert _budget.task_cpus(make_pool(workspace, ray_runtime, memory_budget=int(per_cpu))) == min(2, most)
    assert _budget.task_cpus(make_pool(workspace, ray_runtime, memory_budget=int(per_cpu * 40))) == most
    assert _budget.task_cpus(make_pool(workspace, memory_budget="64GiB")) == 1  # in this process
