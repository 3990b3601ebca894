"""A user's own pool through every built-in filter at its defaults: the share of the pool each one keeps.

Issue 26: on a real clip-art pool scored by a small self-trained CLIP, ``decontaminate``'s default kept
2.3% and ``semdedup``'s 0.9%. This benchmark builds a pool unlike the quickstart's coloured shapes
(patterned clip-art: stripes, checks, rings, dots, waves and gradients in named two-colour palettes,
with titles and descriptions for captions) and goes through it as that user did, with the CLI:

1. the pool, written in img2dataset's layout (``tests/factories.py``): clean pairs plus byte-identical
   duplicate images, non-English, short and mismatched captions, small and extreme-aspect images,
   and byte-identical and re-encoded copies of a held-out evaluation task's images;
2. ``poolsieve train-scorer`` on a random 30% of the pool (a uid ``.npy``: no curation, no pretrained
   weights; a short budget), so the scorer is weak;
3. ``poolsieve score`` with that scorer, and ``score --reference`` for the evaluation images
   (``eval_tasks``) and an image-based target set (``imagenet``, the filter's default name);
4. ``poolsieve filter --dry-run`` over every built-in filter at its defaults (a filter that needs a size
   gets ``fraction=0.3``; one whose default column is DataComp's B/32 score gets the scorer's), the old
   defaults beside them, then ``poolsieve filter`` for real on the defaults: a default under 10% is
   refused (exit 2) unless confirmed.

    python benchmarks/user_pool_defaults.py --workspace /tmp/user_pool            # about 5 minutes on 2 cores
    python benchmarks/user_pool_defaults.py --workspace /tmp/user_pool --rows 1000

It prints one table (filter, spec, pairs kept, share of the pool, would it be written) and what
decontaminate removed of the planted copies, by its default rule (perceptual hash confirmed by the
embedding) and by each rule alone; the figures also go to ``<workspace>/user_pool_defaults.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's writer of img2dataset shards

from factories import Sample, write_img2dataset_shards  # noqa: E402

from poolsieve.core.formats import read_uidset, write_subset  # noqa: E402
from poolsieve.core.uids import UidSet, hex_to_keys, uids_to_pairs  # noqa: E402

PATTERNS = ("stripes", "checks", "rings", "dots", "waves", "gradient")
PALETTE = {"teal": (0, 128, 128), "coral": (255, 127, 80), "navy": (20, 30, 110), "mustard": (225, 173, 1),
           "plum": (142, 69, 133), "olive": (110, 120, 30), "crimson": (200, 20, 60), "ivory": (250, 245, 225)}
TITLES = ("wallpaper", "background", "tile", "print", "fabric swatch", "poster", "gift wrap", "banner")
DESCRIPTIONS = ("seamless vector clip art", "free to use in any project", "hand drawn digital artwork",
                "high resolution download", "for scrapbooking and crafts")
FOREIGN = ("motif {p} en {a} et {b} pour papier peint", "Muster mit {p} in {a} und {b} als Hintergrund",
           "patrón de {p} en {a} y {b} para imprimir")
PER_SHARD = 1000
SEED_SHARE = 0.3
SCORER_SAMPLES = 2048  # a short budget: a weak scorer, as a user's first one is


def draw(pattern: str, fg: str, bg: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One patterned clip-art image (``size`` square), its geometry jittered by ``rng``."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    period = rng.uniform(0.08, 0.2)
    angle = rng.uniform(0, np.pi)
    u = x * np.cos(angle) + y * np.sin(angle)
    cx, cy = rng.uniform(0.3, 0.7, 2)
    r = np.hypot(x - cx, y - cy)
    mask = {"stripes": (u / period) % 1 < 0.5,
            "checks": ((x // period) + (y // period)) % 2 < 1,
            "rings": (r / period) % 1 < 0.5,
            "dots": np.hypot((x / period) % 1 - 0.5, (y / period) % 1 - 0.5) < 0.3,
            "waves": ((y + 0.05 * np.sin(2 * np.pi * x / period)) / period) % 1 < 0.5,
            "gradient": u > rng.uniform(0.2, 0.8)}[pattern]
    a, b = np.array(PALETTE[fg], np.float32), np.array(PALETTE[bg], np.float32)
    img = np.where(mask[..., None], a, b) + rng.normal(0, 6, (size, size, 3))
    if pattern == "gradient":
        img = b + (a - b) * np.clip(u, 0, 1)[..., None] + rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def caption(pattern: str, fg: str, bg: str, rng: np.random.Generator) -> str:
    title = f"{fg.capitalize()} and {bg} {pattern} {rng.choice(TITLES)}"
    return f"{title}. {rng.choice(DESCRIPTIONS).capitalize()}" if rng.random() < 0.6 else title


def make_uid(rng: np.random.Generator) -> str:
    return "".join(f"{int(v):016x}" for v in rng.integers(0, 2**63, 2))


def eval_set(folder: Path, per_class: int, seed: int) -> list[tuple[str, bytes]]:
    """A held-out pattern-classification task as class subfolders (what ``score --reference`` reads)."""
    rng = np.random.default_rng(seed)
    images = []
    for pattern in PATTERNS:
        (folder / pattern).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            fg, bg = rng.choice(list(PALETTE), 2, replace=False)
            data = jpeg(draw(pattern, fg, bg, 64, rng))
            (folder / pattern / f"{i:03d}.jpg").write_bytes(data)
            images.append((pattern, data))
    return images


def make_pool(rows: int, evals: list[tuple[str, bytes]], seed: int) -> tuple[list[Sample], dict[str, list[str]]]:
    """The pool's samples and the uids of each planted kind (``clean`` included)."""
    rng = np.random.default_rng(seed)
    kinds = ["clean"] * rows
    cut = iter(rng.permutation(rows))
    for kind, share in (("duplicate image", 0.08), ("non-English", 0.05), ("short caption", 0.04),
                        ("mismatched caption", 0.10), ("small image", 0.06), ("extreme aspect", 0.03),
                        ("eval copy", 0.02), ("eval near copy", 0.01)):
        for _ in range(int(rows * share)):
            kinds[next(cut)] = kind
    samples, planted = [], {}
    for i, kind in enumerate(kinds):
        pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
        fg, bg = (str(c) for c in rng.choice(list(PALETTE), 2, replace=False))
        data = jpeg(draw(pattern, fg, bg, 64, rng))
        text = caption(pattern, fg, bg, rng)
        width, height = (int(v) for v in rng.integers(300, 900, 2))
        if kind == "duplicate image" and samples:
            data = samples[int(rng.integers(len(samples)))].jpeg
        elif kind in ("eval copy", "eval near copy"):
            pattern, data = evals[int(rng.integers(len(evals)))]
            if kind == "eval near copy":  # the same picture, re-encoded at another quality
                data = jpeg(Image.open(io.BytesIO(data)).convert("RGB"), quality=70)
        elif kind == "non-English":
            text = str(rng.choice(FOREIGN)).format(p=pattern, a=fg, b=bg)
        elif kind == "short caption":
            text = str(rng.choice(["img", f"IMG_{i:04d}", "tile"]))
        elif kind == "mismatched caption":
            text = caption(str(rng.choice([p for p in PATTERNS if p != pattern])), bg, fg, rng)
        elif kind == "small image":
            width, height = (int(v) for v in rng.integers(60, 190, 2))
        elif kind == "extreme aspect":
            width, height = int(rng.integers(1200, 2000)), int(rng.integers(120, 300))
        sample = Sample(make_uid(rng), data, text, original_width=width, original_height=height)
        samples.append(sample)
        planted.setdefault(kind, []).append(sample.uid)
    return samples, planted


def poolsieve(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """One poolsieve command as a user runs it (in a child process, this interpreter); exit 2 allowed
    when ``check`` is false."""
    proc = subprocess.run([sys.executable, "-m", "poolsieve.pipeline.cli", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        sys.exit(f"poolsieve {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def build(ws: Path, rows: int, seed: int) -> dict[str, list[str]]:
    """The pool's shards, evaluation and target sets, the weak scorer, the score tables and references."""
    inputs = ws / "inputs"
    if (ws / "planted.json").exists():
        return json.loads((ws / "planted.json").read_text())
    evals = eval_set(inputs / "eval_tasks", 40, seed + 1)
    eval_set(inputs / "target", 20, seed + 2)
    samples, planted = make_pool(rows, evals, seed)
    write_img2dataset_shards(ws / "shards", samples, PER_SHARD)
    chosen = np.random.default_rng(seed + 3).choice(len(samples), int(SEED_SHARE * len(samples)), replace=False)
    write_subset(inputs / "random_seed.npy", uids_to_pairs(sorted(samples[int(i)].uid for i in chosen)))
    t0 = time.perf_counter()
    poolsieve("train-scorer", "-w", str(ws), "--executor", "local", "--seed", str(inputs / "random_seed.npy"),
              "--samples-seen", str(SCORER_SAMPLES), "--workers", "1", "--out", str(inputs / "scorer.pt"))
    model = f"scorer=poolsieve-tiny:{inputs / 'scorer.pt'}"
    poolsieve("score", "-w", str(ws), "--executor", "local", "--model", model)
    for folder, name in (("eval_tasks", "eval_tasks"), ("target", "imagenet")):
        poolsieve("score", "-w", str(ws), "--executor", "local", "--model", model, "--reference",
                  str(inputs / folder), "--name", name)
    print(f"pool of {rows:,} pairs built, scorer trained, scored: {time.perf_counter() - t0:.0f} s", flush=True)
    (ws / "planted.json").write_text(json.dumps(planted))
    return planted


COLUMN = "column=clip_scorer_similarity_score"
DEFAULTS = {  # every built-in filter at its defaults; a size or a score column only where the filter needs one
    "no_filter": "no_filter", "basic": "basic", "clip_score": "clip_score(model=scorer, fraction=0.3)",
    "text_based": "text_based", "text_based_in1k": "text_based_in1k", "laion2b": f"laion2b({COLUMN})",
    "laion2b_fasttext": f"laion2b_fasttext({COLUMN})", "image_based": "image_based", "dedup": "dedup",
    "semdedup": "semdedup", "d2_pruning": "d2_pruning(fraction=0.3)", "decontaminate": "decontaminate",
}
OLD_DEFAULTS = {"decontaminate_0.98": "decontaminate(threshold=0.98)", "semdedup_eps0.05": "semdedup(eps=0.05)",
                # decontaminate's near rules one by one: the embedding's calibrated cut (the default before the
                # perceptual hash), and the hash alone
                "decontaminate_emb": "decontaminate(near=embedding)", "decontaminate_phash": "decontaminate(near=phash)"}


def dry_run(ws: Path, specs: dict[str, str]) -> dict[str, dict]:
    """``filter --dry-run`` over ``specs``: per subset (uids, share, refused), read from its table."""
    args = ["filter", "-w", str(ws), "--executor", "local", "--dry-run"]
    for name, spec in specs.items():
        args += ["--spec", f"{name} = {spec}"]
    out = poolsieve(*args).stdout
    rows = {}
    for line in out.splitlines():
        m = re.match(r"(\S+)\s+(\d[\d,]*)\s+([\d.]+)%\s+(written|refused)\s", line)
        if m and m.group(1) in specs:
            rows[m.group(1)] = {"spec": specs[m.group(1)], "uids": int(m.group(2).replace(",", "")),
                                "share": float(m.group(3)) / 100, "refused": m.group(4) == "refused"}
    notes = {m.group(1): m.group(2) for m in re.finditer(r"^  (decontaminate\S*|semdedup\S*): keeps .*?; (.*)$",
                                                         out, re.M)}
    return {**rows, "_notes": notes, "_out": out}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workspace", type=Path, required=True)
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--seed", type=int, default=26)
    args = p.parse_args()
    ws = args.workspace
    planted = build(ws, args.rows, args.seed)
    missing = poolsieve("filter", "-w", str(ws), "--executor", "local", "--spec", "c = clip_score(fraction=0.3)",
                        check=False)
    print("clip_score at its default column:", missing.stderr.strip().splitlines()[-1])
    found = dry_run(ws, {**DEFAULTS, **OLD_DEFAULTS})
    exits = {name: poolsieve("filter", "-w", str(ws), "--executor", "local", "--overwrite", "--spec",
                             f"{name} = {spec}", check=False).returncode for name, spec in DEFAULTS.items()}
    members = sum(len(v) for v in planted.values())
    print(f"\n{'filter':<20} {'spec':<52} {'kept':>6} {'of pool':>8}  dry run   poolsieve filter")
    for name in [*DEFAULTS, *OLD_DEFAULTS]:
        r = found.get(name)
        if r is None:
            print(f"{name:<20} {'(no result: see the dry run)':<52}")
            continue
        verdict = "refused" if r["refused"] else "written"
        real = f"exit {exits[name]}" if name in exits else "(not run)"
        print(f"{name:<20} {r['spec']:<52} {r['uids']:>6,} {100 * r['share']:>7.1f}%  {verdict:<8}  {real}")
    print(f"(pool: {members:,} pairs; planted: "
          + ", ".join(f"{k} {len(v)}" for k, v in planted.items() if k != "clean") + ")")
    for step, note in found["_notes"].items():
        print(f"  {step}: {note}")
    for name in ("decontaminate_emb", "decontaminate_phash"):  # written too, to count what each rule removed
        poolsieve("filter", "-w", str(ws), "--executor", "local", "--overwrite", "--allow-small", "--spec",
                  f"{name} = {OLD_DEFAULTS[name]}")
    removed = {name: removed_by_kind(ws, name, planted)
               for name in ("dedup", "semdedup", "decontaminate", "decontaminate_emb", "decontaminate_phash")}
    for name, counts in removed.items():
        print(f"{name} removed (of each planted kind): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    (ws / "user_pool_defaults.json").write_text(json.dumps(
        {"rows": members, "filters": {k: v for k, v in found.items() if not k.startswith("_")},
         "notes": found["_notes"], "filter_exit": exits, "removed_by_kind": removed}, indent=2))


def removed_by_kind(ws: Path, name: str, planted: dict[str, list[str]]) -> dict[str, str]:
    """Of each planted kind, how many rows subset ``name`` left out (``removed/of``)."""
    path = ws / "subsets" / f"{name}.npy"
    if not path.exists():
        return {}
    kept = read_uidset(path)
    out = {}
    for kind, uids in planted.items():
        inside = len(kept & UidSet(hex_to_keys(np.asarray(uids, dtype=object))))
        out[kind] = f"{len(uids) - inside}/{len(uids)}"
    return out


if __name__ == "__main__":
    main()
