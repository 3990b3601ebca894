"""Filter speed, side by side: poolsieve vs DataComp's reference logic on the same parquet files.

    python benchmarks/filter_speed.py                     # 1M rows in 100 files (generated once, cached)
    python benchmarks/filter_speed.py --rows 100000 --files 10 --repeats 1

The pool: DataComp-metadata columns (uid, url, text, original_width/height, clip_b32/l14 scores;
captions of 1-40 words, 60% English, 1% with a newline; scores rounded to 4 decimals so the cut has
ties) plus the ``status``, ``language`` and ``language_score`` columns ``poolsieve score`` writes
(computed once when the pool is generated, time printed).

For ``basic`` and ``clip_score`` (L/14 score, fraction 0.3) it prints poolsieve's time, the time of
DataComp's reference logic (``datacomp_reference.py``: the same per-row pandas work in a spawn pool,
``--workers`` processes, run first, before Ray starts), their ratio and whether the uid sets are
identical. ``basic`` runs twice on poolsieve's side: reading the ``language`` column (the normal
score-once-filter-many path) and recomputing the language from the captions (``recompute_language``,
what a DataComp metadata file without that column costs). poolsieve runs on a local Ray with
``--workers`` CPUs started before timing (start-up printed apart) and in one process (``local``).
Times are medians over ``--repeats`` runs; the first run is printed too (Ray workers start cold).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

WORDS = {
    "en": ("a photo of the dog cat car house tree beautiful red blue green small big old new man woman child "
           "playing running sitting on in with at near beach mountain city street river garden table chair "
           "goldfish tiger shark laptop pizza guitar bicycle wedding dress sunset kitchen modern vintage"),
    "fr": ("une photo de la le chien chat voiture maison arbre belle rouge bleu vert petit grand vieux nouveau "
           "homme femme enfant sur dans avec plage montagne ville rue jardin cuisine robe"),
    "de": ("ein eine foto der die das hund katze auto haus baum schön rot blau grün klein groß alt neu mann "
           "frau kind auf im mit strand berg stadt straße garten küche kleid"),
    "es": ("una foto de el la perro gato coche casa árbol hermoso rojo azul verde pequeño grande viejo nuevo "
           "hombre mujer niño en con playa montaña ciudad calle jardín cocina vestido"),
    "it": ("una foto del la il cane gatto macchina casa albero bella rosso blu verde piccolo grande vecchio "
           "nuovo uomo donna bambino sulla nella con spiaggia montagna città strada giardino"),
    "ru": ("фото собака кошка машина дом дерево красивый красный синий зеленый маленький большой старый новый "
           "мужчина женщина ребенок на в с пляж гора город улица сад"),
}
LANGUAGE_SHARE = {"en": 0.6, "fr": 0.1, "de": 0.1, "es": 0.08, "it": 0.07, "ru": 0.05}
SCORE_COLUMN = "clip_l14_similarity_score"


def _add_language(path: str) -> None:
    """Add the ``language`` / ``language_score`` columns the way ``poolsieve score`` writes them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from poolsieve.core.language import detect_languages

    table = pq.read_table(path)
    codes, confidence = detect_languages(table["text"])
    table = table.append_column("language", pa.array(codes.tolist(), pa.string()))
    table = table.append_column("language_score", pa.array(confidence, pa.float32()))
    pq.write_table(table, path)


def generate_pool(folder: Path, rows: int, files: int, workers: int, seed: int = 0) -> list[Path]:
    """Score-table-like parquet files (DataComp metadata columns + status + language); cached by size."""
    import multiprocessing as mp

    import pandas as pd

    done = folder / f".complete_{rows}_{files}"
    if done.exists():
        return sorted(folder.glob("*.parquet"))
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    rng = np.random.default_rng(seed)
    langs = list(LANGUAGE_SHARE)
    vocab = {k: np.array(v.split(), dtype=object) for k, v in WORDS.items()}
    start = time.perf_counter()
    for f, idx in enumerate(np.array_split(np.arange(rows), files)):
        n = len(idx)
        lang = rng.choice(len(langs), n, p=list(LANGUAGE_SHARE.values()))
        lengths = np.minimum(rng.geometric(0.12, n), 40)
        texts = [" ".join(rng.choice(vocab[langs[li]], k)) for li, k in zip(lang, lengths, strict=True)]
        newline = rng.random(n) < 0.01
        texts = [t.replace(" ", "\n", 1) if nl else t for t, nl in zip(texts, newline, strict=True)]
        width = np.maximum(1, rng.lognormal(6.0, 0.6, n)).astype(np.int64)
        height = np.maximum(1, (width * rng.lognormal(0.0, 0.5, n))).astype(np.int64)
        uids = [rng.bytes(16).hex() for _ in range(n)]
        pd.DataFrame({
            "uid": uids,
            "url": [f"http://127.0.0.1/{f}/{i}.jpg" for i in range(n)],
            "text": texts,
            "original_width": width,
            "original_height": height,
            "clip_b32_similarity_score": np.round(rng.normal(0.28, 0.05, n), 4),
            SCORE_COLUMN: np.round(rng.normal(0.24, 0.06, n), 4),  # rounded: ties at the cut
            "status": "success",
        }).to_parquet(folder / f"{f:08d}.parquet", index=False)
    made = time.perf_counter()
    paths = sorted(folder.glob("*.parquet"))
    with mp.get_context("spawn").Pool(workers) as pool:
        list(pool.imap_unordered(_add_language, [str(p) for p in paths]))
    done.touch()
    print(f"generated {rows:,} rows in {files} files under {folder} in {made - start:.1f} s; language columns "
          f"(as `poolsieve score` writes them, once per pool) in {time.perf_counter() - made:.1f} s", flush=True)
    return paths


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool", type=Path, default=Path("/tmp/poolsieve-bench/pool"))
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2, help="processes for the reference; CPUs for poolsieve's Ray")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fraction", type=float, default=0.3)
    args = ap.parse_args()

    import os

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import datacomp_reference as reference

    from poolsieve.core.runtime import Runtime
    from poolsieve.filters.registry import ScoredPool, get_filter

    paths = generate_pool(args.pool, args.rows, args.files, args.workers)
    str_paths = [str(p) for p in paths]

    print("-- DataComp reference logic", flush=True)
    reference_runs = {
        "basic": timed(lambda: reference.basic(str_paths, args.workers), args.repeats),
        "clip_score": timed(lambda: reference.clip_score_fraction(str_paths, SCORE_COLUMN, args.fraction,
                                                                  args.workers)[0], args.repeats),
    }

    start = time.perf_counter()
    ray_runtime = Runtime(executor="ray", num_cpus=args.workers)
    ray_runtime.ensure_ray()
    ray_start = time.perf_counter() - start
    runtimes = {"ray": ray_runtime, "local": Runtime(executor="local")}
    cases = {
        ("basic", "language column"): ("basic", lambda pool: get_filter("basic")(pool)),
        ("basic", "language computed"): ("basic", lambda pool: get_filter("basic")(pool, recompute_language=True)),
        (f"clip_score l14 fraction {args.fraction}", "score column"): (
            "clip_score", lambda pool: get_filter("clip_score")(pool, column=SCORE_COLUMN, fraction=args.fraction)),
    }
    rows = []
    for (name, variant), (ref_name, ours) in cases.items():
        print(f"-- poolsieve {name} ({variant})", flush=True)
        ref_uids, ref_times = reference_runs[ref_name]
        ref_med = statistics.median(ref_times)
        for kind, rt in runtimes.items():
            uids, times = timed(lambda rt=rt, ours=ours: ours(ScoredPool(paths, rt)), args.repeats)
            med = statistics.median(times)
            rows.append((name, variant, kind, len(uids), med, times[0], ref_med, len(ref_uids), ref_med / med,
                         bool(np.array_equal(uids.to_pairs(), ref_uids))))
    ray_runtime.shutdown()

    print(f"\npool: {args.rows:,} rows, {args.files} parquet files; {args.workers} workers; median of "
          f"{args.repeats}; Ray start-up (not in the poolsieve/ray times): {ray_start:.1f} s; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    header = ("filter", "caption language", "executor", "uids", "poolsieve s", "1st run s", "DataComp ref s",
              "ref uids", "speed-up", "identical")
    widths = [28, 17, 8, 9, 11, 9, 14, 9, 8, 9]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        cells = [r[0], r[1], r[2], f"{r[3]:,}", f"{r[4]:.2f}", f"{r[5]:.2f}", f"{r[6]:.2f}", f"{r[7]:,}",
                 f"{r[8]:.1f}x", "yes" if r[9] else "NO"]
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    return 0 if all(r[9] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
