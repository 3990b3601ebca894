"""DataComp parity: DataComp's own ``baselines.py`` and ``poolsieve filter`` on the same metadata pool.

    python benchmarks/datacomp_parity.py                       # 1M rows in 100 files (generated once, cached)
    python benchmarks/datacomp_parity.py --rows 20000 --files 4 --only text_based laion2b

The pool is DataComp metadata (``uid``, ``url``, ``text``, ``original_width/height``, float64
``clip_b32/l14_similarity_score`` rounded to 4 decimals so cuts have ties; no ``language`` column).
Captions are built to exercise the text rules: English words from a common list and from WordNet's
lemmas (nouns, verbs, adjectives: some first senses are ImageNet-21k classes, some are not), with
capitals, plural ``s``, trailing punctuation (``"necklace."``), possessives and quotes; French,
German, Spanish, Italian, Russian and Chinese captions; 1% with a newline, 0.5% with other Unicode
whitespace, 0.5% empty.

For each baseline it runs DataComp's ``baselines.py`` with DataComp's interpreter (``--dc-python``,
``--num_workers --workers``) and ``poolsieve filter --tables POOL --executor local`` (whole commands,
wall time printed), then compares the two ``.npy`` files: uid counts, the symmetric difference of
the uid sets and whether the files are byte-identical. DataComp runs offline through
``datacomp_offline/sitecustomize.py``: its downloads are served from local files (timm's
ImageNet-21k list, whose sha256 is the one DataComp pins; fastText's ``lid.176.ftz``, the model
poolsieve uses, in place of ``lid.176.bin``), and nltk reads the same WordNet 3.0 files as poolsieve,
copied into an ``nltk_data`` folder. DataComp's interpreter needs ``nltk``, ``gcld3``, ``fsspec``, torch
and fastText's own ``fasttext`` package (``image_based`` counts words with its ``tokenize``, which
``fasttext-predict`` lacks). poolsieve's environment plus ``fasttext`` 0.9.3 in a venv layered on it::

    python3.11 -m venv /tmp/dcenv
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/dcenv/lib/python3.11/site-packages/poolsieve.pth
    /tmp/dcenv/bin/pip install --no-deps fasttext==0.9.3    # builds fastText's C++ (about 2 minutes)

``image_based`` is compared on DataComp's released-file path: each metadata file gets its ``NAME.npz``
with ``l14_img`` (fp16, DataComp's metadata layout), and the benchmark writes a centroid file
(``small_centroids.pt``: ``torch.save`` of a float32 numpy array, 1,000 x 768, norms 0.5-1 so that
inner product and L2 would pick differently) and five target files (``in1k_clip_vit_l14_{0..4}.pt``,
``torch.save({"image_features": fp16 tensor})``, near 150 of the centroids). Pool rows lie near one
centroid (80%; 12% of them nearer another), halfway between two (10%, boundary cases) or anywhere (10%). DataComp runs
``baselines.py --name image_based --image_based_scale small`` on the CPU through the shim
(``POOLSIEVE_DC_CPU=1``: its ``cuda`` tensors stay on the CPU; its ``download`` returns these files;
its ``torch.load`` of exactly these files runs with ``weights_only=False``, as its code expects);
poolsieve runs ``image_based(centroids=.../small_centroids.pt, target=.../)``. 100k rows are enough
(``--rows 100000 --files 10 --only image_based``); at 1M rows the ``.npz`` files take 1.5 GB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# name -> (DataComp baselines.py arguments, poolsieve filter expression)
BASELINES = {
    "no_filter": (["--name", "no_filter"], "no_filter"),
    "basic": (["--name", "basic_filter"], "basic"),
    "clip_score_l14_f0.3": (["--name", "clip_score", "--arch", "l14", "--fraction", "0.3"],
                            "clip_score(model=l14, fraction=0.3)"),
    "clip_score_b32_t0.3": (["--name", "clip_score", "--arch", "b32", "--threshold", "0.3"],
                            "clip_score(model=b32, threshold=0.3)"),
    "text_based": (["--name", "text_based"], "text_based"),
    "laion2b": (["--name", "laion2b"], "laion2b"),
    "image_based": (["--name", "image_based", "--image_based_scale", "small", "--num_gpus", "1"],
                    "image_based(centroids={assets}/small_centroids.pt, target={assets}/)"),
}
DIM, CENTROIDS, TARGET_CONCEPTS, TARGET_ROWS = 768, 1000, 150, 2000  # image_based's generated files

COMMON_EN = (
    "a an the photo picture image of on in at with near for and by from to my our new old big small red blue "
    "green black white beautiful vintage modern cute happy dog cat car house tree beach mountain city street "
    "river garden kitchen table chair man woman child girl boy family wedding dress necklace ring shoes bag "
    "laptop pizza guitar bicycle sunset flowers coffee book")
OTHER = {
    "fr": "une photo de la le chien chat voiture maison arbre belle rouge bleu sur dans avec plage ville rue jardin",
    "de": "ein eine foto der die das hund katze auto haus baum schön rot blau auf im mit strand berg stadt garten",
    "es": "una foto de el la perro gato coche casa árbol hermoso rojo azul en con playa montaña ciudad calle",
    "it": "una foto del la il cane gatto macchina casa albero bella rosso blu sulla nella con spiaggia città",
    "ru": "фото собака кошка машина дом дерево красивый красный синий на в с пляж гора город улица сад",
    "zh": "照片 狗 猫 汽车 房子 树 美丽 红色 蓝色 海滩 山 城市 街道 花园 厨房",
}
LANGUAGE_SHARE = {"en": 0.6, "fr": 0.1, "de": 0.1, "es": 0.08, "it": 0.05, "ru": 0.04, "zh": 0.03}
PUNCTUATION = np.array([".", ",", "!", "?", ":", ";", "'s", "\"", ")"], dtype=object)


def english_vocabulary(rng: np.random.Generator, size: int) -> np.ndarray:
    from poolsieve.core.wordnet import wordnet_reader

    lemmas = sorted(wordnet_reader().all_lemma_names())
    picked = rng.choice(np.array(lemmas, dtype=object), size, replace=False)
    return np.concatenate([np.array(COMMON_EN.split() * 20, dtype=object), picked])


def decorate(words: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Capitals, plurals, punctuation: the cases where ``text.split()`` words differ from bare lemmas."""
    out = words.copy()
    u = rng.random(len(out))
    cap = u < 0.10
    out[cap] = [w.capitalize() for w in out[cap]]
    upper = (u >= 0.10) & (u < 0.13)
    out[upper] = [w.upper() for w in out[upper]]
    plural = (u >= 0.13) & (u < 0.20)
    out[plural] = [w + "s" for w in out[plural]]
    punct = (u >= 0.20) & (u < 0.27)
    out[punct] = [w + p for w, p in zip(out[punct], rng.choice(PUNCTUATION, int(punct.sum())), strict=True)]
    return out


def vary_spacing(text: str, x: float) -> str:
    """1% of captions get a newline, 0.5% an ideographic space or a tab, 0.5% are empty."""
    if x < 0.01:
        return text.replace(" ", "\n", 1)
    if x < 0.015:
        return text.replace(" ", "\u3000" if x < 0.0125 else "\t", 1)
    return "" if x < 0.02 else text


def generate_pool(folder: Path, rows: int, files: int, seed: int = 0) -> list[Path]:
    """DataComp metadata parquet files; cached by size."""
    import pandas as pd

    done = folder / f".complete_{rows}_{files}_{seed}"
    if done.exists():
        return sorted(folder.glob("*.parquet"))
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    english = english_vocabulary(rng, 6000)
    vocab = {k: np.array(v.split(), dtype=object) for k, v in OTHER.items()}
    vocab["en"] = english
    langs = list(LANGUAGE_SHARE)
    start = time.perf_counter()
    for f, idx in enumerate(np.array_split(np.arange(rows), files)):
        n = len(idx)
        lang = rng.choice(len(langs), n, p=list(LANGUAGE_SHARE.values()))
        lengths = np.minimum(rng.geometric(0.15, n), 40)
        texts = []
        for li, k in zip(lang, lengths, strict=True):
            words = rng.choice(vocab[langs[li]], k)
            texts.append(" ".join(decorate(words, rng) if langs[li] == "en" else words))
        texts = [vary_spacing(t, x) for t, x in zip(texts, rng.random(n), strict=True)]
        width = np.maximum(1, rng.lognormal(6.0, 0.6, n)).astype(np.int64)
        height = np.maximum(1, (width * rng.lognormal(0.0, 0.5, n))).astype(np.int64)
        pd.DataFrame({
            "uid": [rng.bytes(16).hex() for _ in range(n)],
            "url": [f"http://127.0.0.1/{f}/{i}.jpg" for i in range(n)],
            "text": texts,
            "original_width": width,
            "original_height": height,
            "clip_b32_similarity_score": np.round(rng.normal(0.28, 0.05, n), 4),
            "clip_l14_similarity_score": np.round(rng.normal(0.24, 0.06, n), 4),
        }).to_parquet(folder / f"{f:08d}.parquet", index=False)
    done.touch()
    print(f"generated {rows:,} rows in {files} files under {folder} in {time.perf_counter() - start:.1f} s",
          flush=True)
    return sorted(folder.glob("*.parquet"))


def centroid_array(seed: int) -> np.ndarray:
    """The generated pool's centroids: random directions with norms in [0.5, 1] (k-means centroids of unit
    vectors are shorter than 1), float32."""
    rng = np.random.default_rng([seed, 1])
    c = rng.standard_normal((CENTROIDS, DIM))
    return (c / np.linalg.norm(c, axis=1, keepdims=True) * rng.uniform(0.5, 1.0, (CENTROIDS, 1))).astype(np.float32)


def rows_near(centroids: np.ndarray, picks: np.ndarray, rng: np.random.Generator, spread: float,
              mixed: bool) -> np.ndarray:
    """Unit fp16 rows near ``centroids[picks]`` (noise of norm ``spread``); when ``mixed``, 10% halfway
    between two centroids (noise of norm 0.5) and 10% random directions."""
    unit = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    noise = rng.standard_normal((len(picks), DIM)) / np.sqrt(DIM)
    x = unit[picks] + spread * noise
    if mixed:
        kind = rng.random(len(picks))
        half = (kind >= 0.8) & (kind < 0.9)
        x[half] = (unit[picks[half]] + unit[rng.integers(0, len(unit), int(half.sum()))]) / 2 + 0.5 * noise[half]
        x[kind >= 0.9] = noise[kind >= 0.9]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def add_image_embeddings(folder: Path, files: list[Path], seed: int = 0) -> None:
    """``NAME.npz`` with ``l14_img`` beside each ``NAME.parquet`` (DataComp's metadata layout); cached."""
    import pyarrow.parquet as pq

    done = folder / f".l14_img_complete_{seed}"
    if done.exists():
        return
    centroids = centroid_array(seed)
    for i, path in enumerate(files):
        rng = np.random.default_rng([seed, 2, i])
        n = pq.ParquetFile(path).metadata.num_rows
        np.savez(path.with_suffix(".npz"), l14_img=rows_near(centroids, rng.integers(0, CENTROIDS, n), rng, 5.0, True))
    done.touch()


def image_based_assets(folder: Path, seed: int = 0) -> dict[str, Path]:
    """DataComp's file names -> the generated centroid file and five target files, in its formats."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    centroids = centroid_array(seed)
    files = {"small_centroids": folder / "small_centroids.pt"}
    torch.save(centroids, files["small_centroids"])
    rng = np.random.default_rng([seed, 3])
    concepts = rng.choice(CENTROIDS, TARGET_CONCEPTS, replace=False)
    for i in range(5):
        files[f"in1k_clip_vit_l14_{i}"] = folder / f"in1k_clip_vit_l14_{i}.pt"
        rows = rows_near(centroids, rng.choice(concepts, TARGET_ROWS), rng, 3.0, False)
        torch.save({"image_features": torch.from_numpy(rows)}, files[f"in1k_clip_vit_l14_{i}"])
    return files


def nltk_data_folder(folder: Path) -> Path:
    """``folder/corpora/wordnet``: poolsieve's WordNet 3.0 files (copied: nltk refuses symlinks out of its
    data folders) plus the ``lexnames`` file Debian does not ship."""
    from poolsieve.core.wordnet import lexnames_text, wordnet_dir

    target = folder / "corpora" / "wordnet"
    if not (target / "lexnames").exists():
        target.mkdir(parents=True, exist_ok=True)
        for path in wordnet_dir().iterdir():
            if path.is_file():
                shutil.copyfile(path, target / path.name)
        (target / "lexnames").write_text(lexnames_text())
    return folder


def datacomp_env(args: argparse.Namespace, nltk_data: Path, assets: dict[str, Path]) -> dict[str, str]:
    """DataComp's environment: the offline shim, its downloads served from ``assets`` (plus the language
    model and the ImageNet-21k list), image_based on the CPU."""
    from poolsieve.core.language import lid_model_path
    from poolsieve.core.wordnet import imagenet21k_file

    local = {"fasttext": lid_model_path(), "imagenet21k_wordnet_ids": imagenet21k_file(), **assets}
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": str(HERE / "datacomp_offline"),
        "POOLSIEVE_DC_REPO": str(args.datacomp),
        "POOLSIEVE_DC_ASSETS": ",".join(f"{name}={path}" for name, path in local.items()),
        "POOLSIEVE_DC_CPU": "1",
        "NLTK_DATA": str(nltk_data),
    })
    return env


def run_command(cmd: list[str], log: Path, **kwargs) -> float:
    start = time.perf_counter()
    with open(log, "w") as out:
        res = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    took = time.perf_counter() - start
    if res.returncode != 0:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"command failed ({res.returncode}): {' '.join(cmd)}\n{tail}")
    return took


def uid_set(path: Path) -> set[tuple[int, int]]:
    return set(map(tuple, np.load(path).tolist()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool", type=Path, default=Path("/tmp/poolsieve-parity/pool"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/poolsieve-parity/out"))
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2, help="DataComp's --num_workers")
    ap.add_argument("--datacomp", type=Path, default=Path("/tmp/datacomp"), help="DataComp's checkout")
    ap.add_argument("--dc-python", default="/tmp/dcenv/bin/python", help="DataComp's interpreter")
    ap.add_argument("--only", nargs="*", choices=list(BASELINES), help="run these baselines only")
    args = ap.parse_args()

    files = generate_pool(args.pool, args.rows, args.files)
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(BASELINES)
    assets = {}
    if "image_based" in names:
        add_image_embeddings(args.pool, files)
        assets = image_based_assets(args.out / "image_based_assets")
    env = datacomp_env(args, nltk_data_folder(args.out / "nltk_data"), assets)
    workspace = args.out / "workspace"
    workspace.mkdir(exist_ok=True)
    poolsieve = str(Path(sys.executable).parent / "poolsieve")
    rows = []
    for name in names:
        dc_args, expr = BASELINES[name]
        expr = expr.format(assets=args.out / "image_based_assets")
        dc_npy, ours_npy = args.out / f"datacomp_{name}.npy", workspace / "subsets" / f"{name}.npy"
        print(f"-- {name}: DataComp baselines.py", flush=True)
        dc_s = run_command([args.dc_python, "baselines.py", *dc_args, "--metadata_dir", str(args.pool),
                            "--save_path", str(dc_npy), "--num_workers", str(args.workers)],
                           args.out / f"datacomp_{name}.log", cwd=args.datacomp, env=env)
        print(f"-- {name}: poolsieve filter --spec '{name} = {expr}'", flush=True)
        ours_s = run_command([poolsieve, "filter", "-w", str(workspace), "--tables", str(args.pool),
                              "--spec", f"{name} = {expr}", "--executor", "local", "--overwrite"],
                             args.out / f"poolsieve_{name}.log")
        theirs, ours = uid_set(dc_npy), uid_set(ours_npy)
        same_bytes = dc_npy.read_bytes() == ours_npy.read_bytes()
        rows.append((name, len(theirs), len(ours), len(theirs ^ ours), same_bytes, dc_s, ours_s))
        print(f"   DataComp {len(theirs):,} uids in {dc_s:.1f} s, poolsieve {len(ours):,} in {ours_s:.1f} s, "
              f"symmetric difference {len(theirs ^ ours):,}, same bytes: {same_bytes}", flush=True)

    print(f"\npool: {args.rows:,} rows in {args.files} files ({args.pool}); DataComp --num_workers {args.workers}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    header = ("baseline", "DataComp uids", "poolsieve uids", "sym. diff.", "same bytes", "DataComp s", "poolsieve s")
    widths = [22, 14, 15, 11, 11, 11, 11]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        cells = [r[0], f"{r[1]:,}", f"{r[2]:,}", f"{r[3]:,}", "yes" if r[4] else "NO", f"{r[5]:.1f}", f"{r[6]:.1f}"]
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    if "image_based" in names:
        print("image_based: DataComp on the CPU (datacomp_offline shim), both given the generated "
              f"{CENTROIDS:,} x {DIM} centroids and 5 x {TARGET_ROWS:,} target rows")
    return 0 if all(r[3] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
