"""Filter speed as a user times it: whole ``poolsieve filter`` commands vs DataComp's ``baselines.py``.

    python benchmarks/filter_speed.py                       # 1M rows in 100 files (generated once, cached)
    python benchmarks/filter_speed.py --rows 100000 --files 10 --repeats 1 --ray

Both sides are timed from the shell's point of view: the process starts, imports what it needs,
reads the same parquet files, writes its ``.npy`` and exits. DataComp's side is its own script,
``baselines.py`` (``--datacomp``, default ``/tmp/datacomp/baselines.py``), run by its own interpreter
(``--datacomp-python``, default ``/tmp/dcenv/bin/python``) with ``--num_workers --workers``. Its code is
untouched; ``benchmarks/datacomp_offline/`` on its ``PYTHONPATH`` only makes its ``download("fasttext")``
return the ``lid.176.ftz`` poolsieve uses (``lid.176.bin`` cannot be fetched here), so its spawned workers
load that model file. poolsieve's side is ``poolsieve filter -w WS --tables POOL --spec ...`` as installed,
with its defaults (a pool this size is filtered in-process: no Ray start); ``--ray`` adds a column with
``--ray-above-mb 0`` (a local Ray started and stopped by the command; its CPU figure misses the Ray
workers', which are not the command's own children, so only its wall time compares).

The pool: DataComp-metadata columns (uid, url, text, original_width/height, clip_b32/l14 scores;
captions of 1-40 words, 60% English, 1% with a newline; scores rounded to 4 decimals so the cut has
ties) plus the ``status``, ``language`` and ``language_score`` columns ``poolsieve score`` writes
(computed once when the pool is generated, time printed). ``basic`` runs twice on poolsieve's side:
reading the stored ``language`` column (score once, filter many) and detecting the language again
(``recompute_language=true``, what DataComp's script always does).

Each case runs the two commands alternately ``--repeats`` times and prints the medians of their wall
time and of their CPU time (user + system, of the command and every process it started; unlike the wall
time it barely moves when other work loads the machine), the 1-minute load average before the runs,
whether the two ``.npy`` files hold the same uids (and the same bytes), and DataComp's time over poolsieve's.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

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


CASES = (  # label, poolsieve spec, DataComp's baselines.py arguments (the two of issue 19's goal first)
    ("clip_score L/14 fraction 0.3", "clip_score(model=l14, fraction=0.3)",
     ["--name", "clip_score", "--arch", "l14", "--fraction", "0.3"]),
    ("basic (language stored)", "basic", ["--name", "basic_filter"]),
    ("clip_score B/32 threshold 0.3", "clip_score(model=b32, threshold=0.3)",
     ["--name", "clip_score", "--arch", "b32", "--threshold", "0.3"]),
    ("basic (language detected)", "basic(recompute_language=true)", ["--name", "basic_filter"]),
    ("no_filter", "no_filter", ["--name", "no_filter"]),
)


def run_timed(cmd: list[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> tuple[float, float, float]:
    """(wall seconds of the whole command, CPU seconds of it and every process it started, 1-minute load
    average just before it); exits on failure."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, load


def datacomp_env(args: argparse.Namespace) -> dict[str, str]:
    from poolsieve.core.language import lid_model_path

    return {**os.environ, "PYTHONPATH": str(HERE / "datacomp_offline"), "NO_ALBUMENTATIONS_UPDATE": "1",
            "POOLSIEVE_DC_REPO": str(Path(args.datacomp).parent), "POOLSIEVE_DC_ASSETS": f"fasttext={lid_model_path()}"}


def poolsieve_command() -> list[str]:
    script = Path(sys.executable).parent / "poolsieve"
    return [str(script)] if script.exists() else [sys.executable, "-m", "poolsieve.pipeline.cli"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool", type=Path, default=Path("/tmp/poolsieve-bench/pool"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/poolsieve-bench/filter-speed"),
                    help="poolsieve's workspace and DataComp's outputs")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2, help="DataComp's --num_workers (and pool generation)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--datacomp", default=os.environ.get("DATACOMP_BASELINES", "/tmp/datacomp/baselines.py"))
    ap.add_argument("--datacomp-python", default=os.environ.get("DATACOMP_PYTHON", "/tmp/dcenv/bin/python"))
    ap.add_argument("--ray", action="store_true", help="also time poolsieve with a local Ray (--ray-above-mb 0)")
    ap.add_argument("--only", help="comma list of case labels' first words to run (clip_score, basic, no_filter)")
    args = ap.parse_args()

    paths = generate_pool(args.pool, args.rows, args.files, args.workers)
    shutil.rmtree(args.work, ignore_errors=True)
    (args.work / "ws").mkdir(parents=True)
    (args.work / "datacomp").mkdir()
    env = datacomp_env(args)
    ours = poolsieve_command()
    cases = [c for c in CASES if not args.only or c[0].split()[0] in args.only.split(",")]
    rows = []
    for i, (label, spec, dc_args) in enumerate(cases):
        name = f"case{i}"
        dc_out = args.work / "datacomp" / f"{name}.npy"
        dc_cmd = [args.datacomp_python, args.datacomp, *dc_args, "--metadata_dir", str(args.pool),
                  "--save_path", str(dc_out), "--num_workers", str(args.workers)]
        ps_cmd = [*ours, "filter", "-w", str(args.work / "ws"), "--tables", str(args.pool),
                  "--spec", f"{name} = {spec}", "--overwrite"]
        variants = {"poolsieve": ps_cmd, **({"poolsieve+ray": [*ps_cmd, "--ray-above-mb", "0"]} if args.ray else {})}
        times: dict[str, list[float]] = {k: [] for k in ("datacomp", *variants)}
        cpus: dict[str, list[float]] = {k: [] for k in times}
        loads: list[float] = []
        print(f"-- {label}", flush=True)
        for _ in range(args.repeats):
            for kind, cmd in {"datacomp": dc_cmd, **variants}.items():
                seconds, cpu, load = (run_timed(cmd, env=env, cwd=Path(args.datacomp).parent)
                                      if kind == "datacomp" else run_timed(cmd))
                times[kind].append(seconds)
                cpus[kind].append(cpu)
                loads.append(load)
            print("   " + "  ".join(f"{k} {v[-1]:.2f} s (CPU {cpus[k][-1]:.2f} s)" for k, v in times.items())
                  + f"  (load {loads[-1]:.1f})", flush=True)
        theirs = np.load(dc_out)
        mine_path = args.work / "ws" / "subsets" / f"{name}.npy"
        same = bool(np.array_equal(theirs, np.load(mine_path)))
        same_bytes = dc_out.read_bytes() == mine_path.read_bytes()
        med = {k: statistics.median(v) for k, v in times.items()}
        cpu = {k: statistics.median(v) for k, v in cpus.items()}
        rows.append((label, med, cpu, len(theirs), same, same_bytes, min(loads), max(loads)))
        print("   median: " + "  ".join(f"{k} {v:.2f} s (CPU {cpu[k]:.2f} s)" for k, v in med.items())
              + "  speed-up " + "  ".join(f"{med['datacomp'] / v:.1f}x (CPU {cpu['datacomp'] / cpu[k]:.1f}x)"
                                          for k, v in med.items() if k != "datacomp")
              + f"  uids {len(theirs):,} {'identical' if same else 'DIFFERENT'}", flush=True)

    print(f"\npool: {args.rows:,} rows in {args.files} parquet files ({sum(p.stat().st_size for p in paths) / 1e6:.0f} MB); "
          f"DataComp --num_workers {args.workers}; {os.cpu_count()} CPUs; whole commands, median of {args.repeats}")
    kinds = ["datacomp", "poolsieve", *(["poolsieve+ray"] if args.ray else [])]
    header = ["case", *(f"{k} s (CPU s)" for k in kinds), *(f"{k} speed-up (CPU)" for k in kinds[1:]), "uids",
              "identical", "load (1 min)"]
    widths = [30, *([22] * len(kinds)), *([25] * (len(kinds) - 1)), 9, 10, 12]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for label, med, cpu, count, same, same_bytes, lo, hi in rows:
        cells = [label, *(f"{med[k]:.2f} ({cpu[k]:.2f})" for k in kinds),
                 *(f"{med['datacomp'] / med[k]:.1f}x ({cpu['datacomp'] / cpu[k]:.1f}x)" for k in kinds[1:]),
                 f"{count:,}", "bytes" if same_bytes else ("uids" if same else "NO"), f"{lo:.1f}-{hi:.1f}"]
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    return 0 if all(r[4] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
