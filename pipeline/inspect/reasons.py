"""Why a subset left a sampled pool member out: its spec walked row by row.

A subset's record (``subsets/NAME.json``) keeps its resolved spec and each step's details. For the
sampled rows, every leaf of the spec says whether it keeps a row and why not:

* a subset (``{"subset": name}``), or a filter that a saved subset was made of alone: its members;
* ``basic``: the failing test of DataComp's rule (image side, aspect ratio, words, characters,
  language), from the row's own columns;
* ``clip_score``: ``score < threshold`` with the threshold the step recorded (a ``fraction`` cut too);
* ``decontaminate``: an exact (sha256) or near copy, with the cosine and the evaluation image it matched
  (its label and source; the record lists the step's first matches, so rows past them are unknown);
* any other filter: unknown row by row, so the reason is the step itself.

``and`` collects its failing children, ``or`` says none of them kept the row, ``not`` that the inner
part did. The reasons explain; membership itself always comes from the subset file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from poolsieve.core.formats import score_column
from poolsieve.filters.clip_score import DEFAULT_COLUMN
from poolsieve.filters.registry import filter_parameters
from poolsieve.filters.spec import render
from poolsieve.pipeline.inspect.report_data import PoolSample

Why = tuple[np.ndarray | None, list[str]]  # (kept per row or None when unknown, reason per row)


def short_column(column: str) -> str:
    """``clip_b32_similarity_score`` -> ``b32 score``."""
    if column.startswith("clip_") and column.endswith("_similarity_score"):
        return column[len("clip_"):-len("_similarity_score")] + " score"
    return column


def _defaults(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The filter's parameters as it ran: its defaults (from the registry) updated with ``params``."""
    named, _ = filter_parameters(name)
    return {**{p.name: p.default for p in named if p.default is not p.empty}, **params}


def clip_score_column(params: dict[str, Any]) -> str:
    """The score column a ``clip_score`` step read (its ``column``, its ``model``'s, or the default)."""
    return str(params.get("column") or (score_column(str(params["model"])) if params.get("model") else DEFAULT_COLUMN))


def _numbers(frame: Any, column: str) -> np.ndarray:
    if column not in frame:
        return np.full(len(frame), np.nan)
    return np.asarray(frame[column], dtype=np.float64)


def _basic(frame: Any, p: dict[str, Any], details: dict[str, Any], generic: bool) -> Why:
    """DataComp's basic rule, test by test (the filter's own parameters and defaults)."""
    w, h = _numbers(frame, "original_width"), _numbers(frame, "original_height")
    short, long = np.fmin(w, h), np.fmax(w, h)
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = long / short
    texts = frame["text"].fillna("").astype(str) if "text" in frame else None
    words = (_numbers(frame, "caption_words") if "caption_words" in frame
             else np.array([len(t.split()) for t in texts]) if texts is not None else np.full(len(frame), np.nan))
    chars = (_numbers(frame, "caption_length") if "caption_length" in frame
             else np.array([len(t) for t in texts]) if texts is not None else np.full(len(frame), np.nan))
    language = frame["language"].astype(object).to_numpy() if "language" in frame else np.full(len(frame), None)
    want = str(p.get("language", "en"))
    side, ratio, min_words, min_chars = float(p["min_side"]), float(p["max_aspect"]), int(p["min_words"]), int(p["min_chars"])
    # (failed, the test in general, the test with this row's value)
    tests: list[tuple[np.ndarray, str, Callable[[int], str]]] = [
        (~(short >= side), f"image < {side:.0f} px", lambda i: f"image {short[i]:.0f} px < {side:.0f}"),
        (~(aspect <= ratio), f"aspect > {ratio:g}", lambda i: f"aspect {aspect[i]:.1f} > {ratio:g}"),
        (~(words >= min_words), f"< {min_words} words", lambda i: f"{words[i]:.0f} word(s) < {min_words}"),
        (~(chars >= min_chars), f"< {min_chars} chars", lambda i: f"{chars[i]:.0f} char(s) < {min_chars}"),
        (np.array([v is not None and v == v and v != want for v in language], dtype=bool),
         f"language ≠ {want}", lambda i: f"language {language[i]} ≠ {want}"),
    ]
    kept = np.ones(len(frame), dtype=bool)
    why = [""] * len(frame)
    for failed, kind, text in tests:
        for i in np.flatnonzero(failed):
            reason = kind if generic else text(i)
            why[i] = f"{why[i]}, {reason}" if why[i] else f"basic: {reason}"
        kept &= ~failed
    return kept, why


def _clip_score(frame: Any, p: dict[str, Any], details: dict[str, Any], generic: bool) -> Why:
    column = clip_score_column(p)
    threshold = details.get("threshold", p.get("threshold"))
    if threshold is None or column not in frame:
        return None, [""] * len(frame)
    values = _numbers(frame, column)
    kept = values >= float(threshold)
    if generic:
        return kept, [f"{short_column(column)} < {float(threshold):.3f}"] * len(frame)
    return kept, [f"{short_column(column)} {below(v, float(threshold))}" for v in values]


def below(value: float, threshold: float) -> str:
    """``value < threshold`` with 3 decimals, or as many more as tell the two apart (a score just under the
    cut would otherwise read ``0.328 < 0.328``)."""
    digits = next((d for d in range(3, 10) if f"{value:.{d}f}" != f"{threshold:.{d}f}"), 10)
    return f"{value:.{digits}f} < {threshold:.{digits}f}"


def _match_text(match: dict[str, Any], generic: bool) -> str:
    """``near copy (cosine 0.99991) of evaluation image t/005.png (label cat)``; ``near copy`` when generic."""
    kind = f"{match.get('kind', 'exact')} copy"
    if generic:
        return f"decontaminate: {kind}"
    cosine, bits = match.get("cosine"), match.get("distance")
    measures = []
    if match.get("kind") == "near" and isinstance(bits, int) and "phash" in str(match.get("by", "")):
        measures.append(f"phash {bits} bits")
    if isinstance(cosine, (int, float)) and match.get("kind") == "near" and match.get("by") != "phash":
        measures.append(f"cosine {cosine:.5f}")
    shown = f" ({', '.join(measures)})" if measures else ""
    image = str(match.get("source") or "")
    label = str(match.get("label") or "")
    of = f" of evaluation image {image}" if image else " of an evaluation image"
    return f"decontaminate: {kind}{shown}{of}" + (f" (label {label})" if label else "")


def _decontaminate(frame: Any, p: dict[str, Any], details: dict[str, Any], generic: bool) -> Why:
    matches = {m.get("uid"): m for m in details.get("matches") or [] if isinstance(m, dict)}
    uids = frame["uid"].astype(str).tolist() if "uid" in frame else [""] * len(frame)
    why = [_match_text(matches[u], generic) if u in matches else "" for u in uids]
    counted = int(details.get("exact_copies") or 0) + int(details.get("near_copies") or 0)
    complete = "exact_copies" in details and len(matches) == counted  # every match listed: membership is known
    return (np.array([u not in matches for u in uids], dtype=bool) if complete else None), why


EXPLAINERS: dict[str, Callable[[Any, dict[str, Any], dict[str, Any], bool], Why]] = {
    "basic": _basic, "basic_filter": _basic, "clip_score": _clip_score, "decontaminate": _decontaminate}


class Explainer:
    """Reasons for chosen rows of a pool sample (``rows``: their positions in ``sample.frame``); ``generic``:
    the failed tests without the rows' own values (``image < 200 px``), for counting reasons."""

    def __init__(self, sample: PoolSample, records: dict[str, dict[str, Any]], rows: Any, generic: bool = False):
        self.generic = generic
        self.rows = np.asarray(rows, dtype=np.int64)
        self.frame = sample.frame.iloc[self.rows]
        self.members = {name: m[self.rows] for name, m in sample.members.items()}
        self.records = records
        self.details = {s.get("step"): s.get("details") or {} for r in records.values()
                        for s in r.get("steps") or [] if isinstance(s, dict)}
        self.alone = {json.dumps(r.get("spec"), sort_keys=True): name for name, r in records.items()
                      if r.get("spec") and name in self.members}

    def dropped_reasons(self, name: str) -> list[str]:
        """A reason per chosen row, for a row outside subset ``name``."""
        record = self.records.get(name) or {}
        spec = record.get("spec")
        fallback = f"outside {record.get('expression') or name}"
        if not isinstance(spec, dict):
            return [fallback] * len(self.rows)
        _, why = self._walk(spec, within=name)
        return [w or fallback for w in why]

    def _walk(self, node: dict[str, Any], within: str) -> Why:
        n = len(self.rows)
        text = render(node)
        if "subset" in node and node["subset"] in self.members and node["subset"] != within:
            return self.members[node["subset"]], [f"not in {node['subset']}"] * n
        if "filter" in node:
            kept, why = None, [""] * n
            explain = EXPLAINERS.get(node["filter"])
            if explain is not None:
                kept, why = explain(self.frame, _defaults(node["filter"], dict(node.get("params") or {})),
                                    self.details.get(text, {}), self.generic)
            saved = self.alone.get(json.dumps(node, sort_keys=True))
            if saved is not None and saved != within:
                kept = self.members[saved]
            return kept, [w or text for w in why]
        if "not" in node:
            kept, _ = self._walk(node["not"], within)
            return (None if kept is None else ~kept), [f"in {render(node['not'])}"] * n
        op = "and" if "and" in node else "or" if "or" in node else None
        if op is None:
            return None, [text] * n
        parts = [self._walk(child, within) for child in node[op]]
        known = [k for k, _ in parts if k is not None]
        if op == "and":
            kept = np.logical_and.reduce(known) if known else None
            why = ["; ".join(w[i] for k, w in parts if k is not None and not k[i]) for i in range(n)]
        else:
            kept = np.logical_or.reduce(known) if len(known) == len(parts) else None
            why = ["none of: " + " | ".join(w[i] for _, w in parts) for i in range(n)]
        return kept, why


def reference_matches(record: dict[str, Any]) -> dict[str, tuple[str, int, str]]:
    """uid -> (reference file, as the step recorded it, relative to the workspace; the evaluation image's row in
    it; a caption: its label and source) for the matches a subset's ``decontaminate`` steps listed."""
    out: dict[str, tuple[str, int, str]] = {}
    for step in record.get("steps") or []:
        details = step.get("details") if isinstance(step, dict) else None
        if not isinstance(details, dict) or not isinstance(details.get("reference"), str):
            continue
        for m in details.get("matches") or []:
            row = m.get("reference_row") if isinstance(m, dict) else None
            if isinstance(row, int) and not isinstance(row, bool) and isinstance(m.get("uid"), str):
                caption = " · ".join(str(m[k]) for k in ("label", "source") if m.get(k))
                out.setdefault(m["uid"], (details["reference"], row, caption))
    return out


def score_thresholds(records: dict[str, dict[str, Any]]) -> list[tuple[str, str, float]]:
    """``(subset, score column, threshold)`` for every ``clip_score`` step a subset's record keeps."""
    out = []
    for name, record in records.items():
        details = {s.get("step"): s.get("details") or {} for s in record.get("steps") or [] if isinstance(s, dict)}
        stack = [record.get("spec")]
        while stack:
            node = stack.pop()
            if not isinstance(node, dict):
                continue
            stack += [*node.get("and", []), *node.get("or", []), node.get("not")]
            if node.get("filter") != "clip_score":
                continue
            p = dict(node.get("params") or {})
            column = clip_score_column(p)
            value = details.get(render(node), {}).get("threshold", p.get("threshold"))
            if isinstance(value, (int, float)):
                out.append((name, column, float(value)))
    return out
