"""``decontaminate``: drop pool samples whose image is one of the evaluation tasks' images, or nearly.

DataComp removed from its pool every image that duplicates or nearly duplicates an image of its
evaluation tasks, so that no model trains on its own test set. This filter does the same against a
reference set of the evaluation images (made once by the score stage, which does the image work:
``poolsieve score --reference EVAL_IMAGES --name eval_tasks`` writes ``references/eval_tasks.npz`` with
each image's ``sha256``, perceptual hash, thumbnail, label, source and embedding by the pool's models).

A pool row is dropped when

1. exact: its image's sha256 is one of the reference's. Both digests a row has are matched: the score
   table's ``sha256`` (of the downloaded bytes) and the metadata's ``sha256`` (of the bytes at the url,
   CommonPool's column, found by uid in ``metadata/*.parquet`` when the workspace has it);
2. near, by the rule ``near`` names:

   * ``phash``: its perceptual hash (the score table's ``phash``: 64 bits of the image's low frequencies,
     no model) is at most ``max_distance`` bits from some reference image's;
   * ``embedding``: its image embedding is nearly some reference image's. Each row's distance is
     ``d = 1 - cos`` to its nearest reference image. With ``threshold: auto`` a row is a near copy when
     ``d <= ratio * median`` and ``cos >= min_cosine``, where ``median`` is the pool's own median of ``d``
     (over the rows that are no exact copy; rounded down to 8 significant bits); a number is a fixed cosine;
   * ``phash+embedding``: both, about the same reference image: some reference image within
     ``max_distance`` bits whose cosine to the row is at least ``1 - confirm_ratio * median`` (and
     ``min_cosine``), or ``threshold`` when that is a number;
   * ``auto`` (the default): ``phash+embedding`` when the score tables and the reference have perceptual
     hashes, else ``embedding`` (a one-line notice says so: re-run ``score`` to add them);
   * ``none``: exact copies only (``threshold: null`` says the same).

| param | default | meaning |
| --- | --- | --- |
| reference | eval_tasks | a reference name in ``references/`` or a path to an npz |
| near | auto | ``auto``, ``phash``, ``embedding``, ``phash+embedding`` or ``none`` (above) |
| max_distance | 8 | phash: at most this many of the 64 bits differ |
| embedding | l14, else b32 | model key of the embeddings compared |
| threshold | auto | the embedding's cut: ``auto`` (calibrated), a cosine in [-1, 1], or ``null``: exact only |
| ratio | 0.05 | ``embedding`` with ``auto``: at most this share of the pool's median distance away |
| confirm_ratio | 0.2 | ``phash+embedding`` with ``auto``: the same, for the image the hash matched |
| min_cosine | 0.95 | ``auto``: and at least this cosine (the rule's floor) |
| exact | true | also drop sha256 matches |

Why both by default. A perceptual hash needs no model, so a weak scorer cannot blur it, and a
re-encoded or resized copy lands a few bits from its original; but it sees only luminance at low
frequencies, so images that differ in colour or in fine texture can share it. On the generated
clip-art pool of ``benchmarks/user_pool_defaults.py`` (weak self-trained scorer; 34 re-encoded copies,
2,899 uncontaminated rows), phash alone at 8 bits took 25 copies and 243 uncontaminated rows; the
calibrated cosine alone 15 and 160; the two about the same image 23 and 9. On the built-in pool (one
flat shape per image) most clean images are within 8 bits of some evaluation image. Each near rule is available alone.

The step's record says how many rows went each way (``exact_copies``, ``near_phash``, ``near_embedding``,
``near_phash_embedding``, their sum ``near_copies``; the ``summary`` line that ``filter`` prints), the
cuts the rule came to, the reference file, and the first ``MAX_MATCHES`` matches with the reference image
each row matched (its row, label, source, distance and cosine: what ``poolsieve inspect`` shows beside a
dropped row, with the reference's thumbnail). Check what it removes before trusting it on a new pool.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from poolsieve.core.errors import ConfigError, InputError, PoolsieveWarning
from poolsieve.core.formats import embedding_keys
from poolsieve.core.uids import UidSet, hex_to_keys
from poolsieve.core.workspace import Workspace

from ._decontaminate_match import (
    Reference,
    TableMatches,
    distance_keys,
    load_reference,
    match_table,
    median_distance,
)
from ._embeddings import pick_embedding_key, reference_file
from ._phash_match import reference_phashes, table_has_phash
from .registry import ScoredPool, register

AUTO = "auto"
NEAR_RULES = ("auto", "phash", "embedding", "phash+embedding", "none")
MAX_MATCHES = 200  # matches listed in the step's record, with the reference image each one matched


def metadata_matches(pool: ScoredPool, hashes: set[str]) -> dict[str, str]:
    """uid -> metadata ``sha256`` (of the bytes at the url) for the uids whose digest is one of ``hashes``: a
    task per metadata file of the workspace (none when it has no metadata), each returning only its matches."""
    ws = Workspace(Path(pool.tables[0]).parent.parent)
    folder = ws.metadata_dir
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    wanted = sorted(hashes)

    def matches(path: Path) -> dict[str, str]:
        if "sha256" not in pq.read_schema(path).names:
            return {}
        t = pq.read_table(path, columns=["uid", "sha256"])
        hit = t.filter(pc.fill_null(pc.is_in(t["sha256"], value_set=pa.array(wanted, pa.string())), False))
        return {u: h for u, h in zip(hit["uid"].to_pylist(), hit["sha256"].to_pylist(), strict=True) if u}

    found: dict[str, str] = {}
    for part in (pool.runtime.map(matches, files, "decontaminate (metadata)") if files else []):
        found.update(part)
    return found


def _number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and bool(np.isfinite(v))


def check_params(near: Any, max_distance: Any, threshold: Any, ratio: Any, confirm_ratio: Any, min_cosine: Any,
                 exact: Any) -> str:
    """The near rule asked for (``auto`` still open), or a one-line ``ConfigError`` for parameters that cannot
    be used. ``threshold: null`` is the older spelling of ``near: none``; a cosine ``threshold`` with
    ``near: auto`` asks for the embedding rule, as it did before ``near`` existed."""
    if near not in NEAR_RULES:
        raise ConfigError(f"decontaminate: near must be one of {', '.join(NEAR_RULES)}, got {near!r}")
    if threshold is not None and threshold != AUTO and not (_number(threshold) and -1 <= threshold <= 1):
        raise ConfigError(f"decontaminate: threshold must be 'auto', a cosine in [-1, 1] or null, got {threshold!r}")
    if not (isinstance(max_distance, int) and not isinstance(max_distance, bool) and 0 <= max_distance <= 64):
        raise ConfigError(f"decontaminate: max_distance must be a whole number of bits in [0, 64], got {max_distance!r}")
    for name, value in (("ratio", ratio), ("confirm_ratio", confirm_ratio)):
        if not (_number(value) and 0 <= value < 1):
            raise ConfigError(f"decontaminate: {name} must be a number in [0, 1), got {value!r}")
    if not (_number(min_cosine) and -1 <= min_cosine <= 1):
        raise ConfigError(f"decontaminate: min_cosine must be a cosine in [-1, 1], got {min_cosine!r}")
    if threshold is None:
        if near not in (AUTO, "none"):
            raise ConfigError(f"decontaminate: threshold null means exact copies only, which contradicts near={near}")
        near = "none"
    elif threshold != AUTO and near in (AUTO, "phash"):
        if near == "phash":
            raise ConfigError("decontaminate: threshold (a cosine) is the embedding's cut; near=phash compares "
                              "hashes only (set max_distance, or near=phash+embedding)")
        near = "embedding"
    if near == "none" and not exact:
        raise ConfigError("decontaminate: with near none (threshold null) and exact false nothing would be compared")
    return str(near)


def resolve_auto(pool: ScoredPool, ref_has_phash: bool, reference: str) -> tuple[str, str | None]:
    """``near: auto`` made definite: ``phash+embedding`` when every score table and the reference have
    perceptual hashes, else ``embedding`` and the one-line notice that says why."""
    tables_with = sum(pool.map(table_has_phash, "decontaminate (perceptual hashes)"))
    if tables_with == len(pool.tables) and ref_has_phash:
        return "phash+embedding", None
    missing = [] if tables_with == len(pool.tables) else [f"{len(pool.tables) - tables_with} of the "
                                                           f"{len(pool.tables)} score tables (score --overwrite)"]
    if not ref_has_phash:
        missing.append(f"the reference {reference} (score --reference ... --overwrite)")
    return "embedding", ("decontaminate: near copies by embedding only: no perceptual hashes in "
                         + " and ".join(missing) + ", which a re-run adds")


def require_phashes(pool: ScoredPool, path: Path, hashes: Any) -> None:
    """A one-line ``InputError`` when ``near`` asks for perceptual hashes that the reference or a table lacks."""
    if hashes is None:
        raise InputError(path, "has no perceptual hashes (made before them): re-run "
                               "`poolsieve score --reference FOLDER --name NAME --overwrite`, or use near=embedding")
    for table, has in zip(pool.tables, pool.map(table_has_phash, "decontaminate (perceptual hashes)"), strict=True):
        if not has:
            raise InputError(table, "has no phash column (scored before it): re-run `poolsieve score --overwrite`, "
                                    "or use near=embedding")


def embedding_cut(pool: ScoredPool, ref: Reference, metadata: dict[str, str], image_key: str, threshold: Any,
                  share: float, share_name: str, min_cosine: float) -> tuple[float, str, float | None]:
    """The cosine cut of the embedding check: ``threshold`` when a number, else calibrated on the pool's
    median distance (a pass over the embeddings); with the rule in words and the median."""
    if threshold != AUTO:
        return float(threshold), "fixed cosine", None

    def histogram(table: Path) -> tuple[np.ndarray, np.ndarray]:
        m = match_table(table, ref, metadata, image_key, None)
        cosine = m.cosine[~m.exact] if m.cosine is not None else np.zeros(0, np.float32)
        return np.unique(distance_keys(cosine), return_counts=True)

    median = median_distance(pool.map(histogram, "decontaminate (the pool's distances)"))
    cut, rule = near_rule(median, share, min_cosine, share_name)
    return (1.0 if cut is None else cut), rule, median


def near_rule(median: float | None, ratio: float, min_cosine: float, name: str = "ratio") -> tuple[float | None, str]:
    """The calibrated cosine cut from the pool's median distance, and the rule in words."""
    if median is None:
        return None, "no row to compare"
    cut = 1.0 - ratio * median
    if cut < min_cosine:
        return float(min_cosine), f"the floor min_cosine; 1 - {ratio:g} x the pool's median distance {median:.3g} is lower"
    return cut, f"1 - {ratio:g} x the pool's median distance {median:.3g}"


@dataclass
class Rule:
    """The near rule decided: ``how`` (``none``, ``phash``, ``embedding``, ``phash+embedding``), its cuts, and
    the rule in words."""

    how: str
    max_distance: int
    cut: float | None = None
    words: str = ""
    median: float | None = None
    notice: str | None = None

    def near(self, m: TableMatches) -> np.ndarray:
        """Which of a table's rows are near copies (exact copies are counted as such, not here)."""
        if not len(m.uids):  # an empty table: nothing was compared
            return np.zeros(0, dtype=bool)
        if self.how == "phash":
            near = m.bits <= self.max_distance
        elif self.how == "embedding":
            near = m.cosine >= self.cut
        elif self.how == "phash+embedding":
            near = m.confirm >= self.cut
        else:
            near = np.zeros(len(m.uids), dtype=bool)
        return near & ~m.exact

    def summary(self, count: int) -> str:
        kind = f"near-{self.how}"
        if self.how == "phash":
            return f"{count:,} {kind} (<= {self.max_distance} of 64 bits)"
        if self.how == "embedding":
            return f"{count:,} {kind} (cosine >= {self.cut:.6f}: {self.words})"
        return (f"{count:,} {kind} (<= {self.max_distance} bits and cosine >= {self.cut:.6f} to that image: "
                f"{self.words})")


def listed_matches(m: TableMatches, near: np.ndarray, ref: Reference, how: str, room: int) -> list[dict[str, Any]]:
    """Up to ``room`` of one table's matches: uid, kind, the rule, the reference image matched (its row, label
    and source), the Hamming distance and cosine to it where compared."""
    out = []
    for i in np.flatnonzero(m.exact | near)[:room]:
        row = int(m.exact_row[i]) if m.exact[i] else m.matched_row(i, how)
        entry: dict[str, Any] = {"uid": str(m.uids[i]), "kind": "exact" if m.exact[i] else "near",
                                 "by": "sha256" if m.exact[i] else how, "reference_row": row, **ref.describe(row)}
        entry.update(m.measures(i, row))
        out.append(entry)
    return out


@register("decontaminate", keeps="max_distance / confirm_ratio / ratio: smaller ones take fewer near copies "
                                 "(near=none: exact copies only)")
def decontaminate(pool: ScoredPool, *, reference: str = "eval_tasks", near: str = AUTO, max_distance: int = 8,
                  embedding: str | None = None, threshold: float | str | None = AUTO, ratio: float = 0.05,
                  confirm_ratio: float = 0.2, min_cosine: float = 0.95, exact: bool = True,
                  report: dict | None = None) -> UidSet:
    """Drop exact (sha256) and near copies of the evaluation images (near: auto = a perceptual hash within
    max_distance bits, confirmed by the embedding; or phash, embedding, phash+embedding, none)."""
    how = check_params(near, max_distance, threshold, ratio, confirm_ratio, min_cosine, exact)
    path = reference_file(pool, reference, "embed the evaluation images first: "
                                           f"poolsieve score --reference FOLDER --name {Path(reference).stem}")
    hashes = reference_phashes(path)
    notice = None
    if how == AUTO:
        how, notice = resolve_auto(pool, hashes is not None, reference)
        if notice:
            warnings.warn(notice, PoolsieveWarning, stacklevel=2)
    elif "phash" in how:
        require_phashes(pool, path, hashes)
    image_key = embedding_keys(pick_embedding_key(pool, embedding))[0] if "embedding" in how else None
    ref = load_reference(path, image_key, bool(exact), hashes if "phash" in how else None)
    metadata = metadata_matches(pool, set(ref.rows)) if ref.rows else {}
    rule = Rule(how, int(max_distance), notice=notice)
    if image_key is not None:
        share, name = (float(ratio), "ratio") if how == "embedding" else (float(confirm_ratio), "confirm_ratio")
        rule.cut, rule.words, rule.median = embedding_cut(pool, ref, metadata, image_key, threshold, share, name,
                                                          float(min_cosine))

    def one(table: Path) -> tuple[UidSet, int, int, list[dict[str, Any]]]:
        m = match_table(table, ref, metadata, image_key, rule.max_distance if "phash" in how else None)
        near_rows = rule.near(m)
        keep = ~(m.exact | near_rows)
        return (UidSet(hex_to_keys(m.uids[keep], source=table)), int(m.exact.sum()), int(near_rows.sum()),
                listed_matches(m, near_rows, ref, how, MAX_MATCHES))

    parts = pool.map(one, "decontaminate")
    if report is not None:
        report.update(_record(parts, ref, rule, _stored_path(pool, path)))
    return UidSet.union_of(p[0] for p in parts)


def _stored_path(pool: ScoredPool, path: Path) -> str:
    """``path`` relative to the pool's workspace when it lies inside it (the record moves with the workspace)."""
    root = Path(pool.tables[0]).parent.parent.resolve()
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def _record(parts: list[tuple], ref: Reference, rule: Rule, reference: str) -> dict:
    """The step's details: counts apart, the rule and the cuts it came to, the first matches listed."""
    exact, near = sum(p[1] for p in parts), sum(p[2] for p in parts)
    out: dict[str, Any] = {"exact_copies": exact, "near": rule.how,
                           **{f"near_{k.replace('+', '_')}": (near if k == rule.how else 0)
                              for k in ("phash", "embedding", "phash+embedding")},
                           "near_copies": near, "reference_images": ref.size, "reference": reference,
                           "rule": rule.words or rule.how,
                           "summary": f"{exact:,} exact (sha256)" + (f", {rule.summary(near)}" if rule.how != "none"
                                                                     else ", near copies not compared"),
                           "matches": [m for p in parts for m in p[3]][:MAX_MATCHES]}
    if "phash" in rule.how:
        out["max_distance"] = rule.max_distance
    if rule.cut is not None:
        out["threshold"] = float(rule.cut)
    if rule.median is not None:
        out["median_distance"] = rule.median
    if rule.notice:
        out["notice"] = rule.notice
    return out
