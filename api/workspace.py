"""``PoolWorkspace``: one pool's workspace, read from Python with the objects the commands use.

Every method reads; none writes. Score tables come from ``core/score_dataset.py`` (the files checked,
one lazy ``pyarrow.dataset``), subsets from their ``.npy`` files checked against their records (as
``reshard`` reads them), a filter spec runs through ``poolsieve filter``'s own evaluator
(``pipeline/filter/stage.py``, nothing written), SQL through ``poolsieve sql``'s locked-down views,
and a grid through the HTML report's cards.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from poolsieve.core.errors import ConfigError
from poolsieve.core.names import check_name
from poolsieve.core.runtime import Runtime
from poolsieve.core.score_dataset import score_dataset
from poolsieve.core.uids import UidSet, hex_to_keys
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.filter.stage import FilterConfig, evaluate_subsets
from poolsieve.pipeline.sql import execute, read_subset, saved_subsets, workspace_connection

from .embeddings import SubsetEmbeddings
from .grid import PairGrid

MEMBER_PREFIX = "in_"  # the column that says a row is in subset NAME: in_NAME (as in `poolsieve sql`)
SubsetLike = str | UidSet


class PoolWorkspace:
    """A workspace opened for reading (``poolsieve.api.open(path)``)."""

    def __init__(self, root: str | Path):
        self.workspace = Workspace.open(root)

    @property
    def root(self) -> Path:
        return self.workspace.root

    def __repr__(self) -> str:
        return f"PoolWorkspace({str(self.root)!r})"

    # ------------------------------------------------------------------------------ score tables
    def tables(self) -> list[Path]:
        """The score tables (``scores/*.parquet``) in shard order."""
        return self.workspace.score_tables()

    def dataset(self) -> Any:
        """Every score table as one lazy ``pyarrow.dataset.Dataset``: read only the columns and rows you ask for,
        e.g. ``ws.dataset().to_table(columns=["uid", "text"], filter=pyarrow.dataset.field("status") == "success")``."""
        return score_dataset(self.tables())

    def table(self, columns: Sequence[str] | None = None, filter: Any = None, *,  # noqa: A002 - pyarrow's word
              subset: SubsetLike | None = None, membership: Iterable[SubsetLike] = ()) -> Any:
        """Score-table rows as one ``pyarrow.Table``, read shard by shard.

        ``columns``: the columns to read (default all); ``filter``: a ``pyarrow.dataset`` expression on them;
        ``subset``: only rows whose uid is in it (a name or a ``UidSet``); ``membership``: subsets to add as
        boolean columns ``in_NAME`` (a ``UidSet`` is named ``in_subset_N``, N its place in the list).
        """
        dataset = self.dataset()
        wanted = list(columns) if columns is not None else list(dataset.schema.names)
        within = self._uidset(subset) if subset is not None else None
        members = self._membership(membership)
        need_uid = within is not None or bool(members)
        read = wanted + (["uid"] if need_uid and "uid" not in wanted else [])
        parts = []
        for fragment in dataset.get_fragments():
            scanner = ds.Scanner.from_fragment(fragment, schema=dataset.schema, columns=read, filter=filter)
            part = scanner.to_table()
            if need_uid:
                keys = hex_to_keys(part["uid"], source=fragment.path)
                for name, uids in members.items():
                    part = part.append_column(MEMBER_PREFIX + name, pa.array(uids.isin(keys)))
                if within is not None:
                    part = part.filter(pa.array(within.isin(keys)))
                if "uid" not in wanted:
                    part = part.drop_columns(["uid"])
            parts.append(part)
        return pa.concat_tables(parts)

    def to_pandas(self, columns: Sequence[str] | None = None, filter: Any = None, *,  # noqa: A002
                  subset: SubsetLike | None = None, membership: Iterable[SubsetLike] = ()) -> Any:
        """``table(...)`` as a pandas DataFrame."""
        return self.table(columns, filter, subset=subset, membership=membership).to_pandas()

    def to_polars(self, columns: Sequence[str] | None = None, filter: Any = None, *,  # noqa: A002
                  subset: SubsetLike | None = None, membership: Iterable[SubsetLike] = ()) -> Any:
        """``table(...)`` as a Polars DataFrame (handed over from arrow without copying where the types allow)."""
        try:
            import polars as pl
        except ImportError:
            raise ConfigError("to_polars needs Polars: pip install polars") from None
        return pl.from_arrow(self.table(columns, filter, subset=subset, membership=membership))

    # ------------------------------------------------------------------------------------ subsets
    def subsets(self) -> list[str]:
        """Names of the saved subsets (``subsets/NAME.npy``)."""
        return list(saved_subsets(self.workspace))

    def subset(self, name: str) -> UidSet:
        """Saved subset ``name`` as a ``UidSet`` (checked against its record, as ``reshard`` checks it)."""
        return read_subset(self.workspace.subset_path(check_name(name, "subset name")))

    def filter(self, spec: str | Mapping[str, Any], name: str | None = None, *,  # noqa: A003
               runtime: Runtime | None = None) -> UidSet:
        """The uids a filter spec keeps, computed in memory by ``poolsieve filter``'s own code; nothing written.

        ``spec``: what ``--spec`` takes (an expression, ``NAME = EXPR``, inline YAML or a YAML file) or a
        mapping of names to specs; ``name`` picks one when it defines several. Saved subsets may be used by
        name. ``runtime``: where the filters run (default: this process).
        """
        cfg = FilterConfig(subsets=dict(spec)) if isinstance(spec, Mapping) else FilterConfig(spec=[spec])
        made = evaluate_subsets(self.workspace, cfg, runtime or Runtime(executor="local"))
        if name is None:
            if len(made) != 1:
                raise ConfigError(f"the spec makes {len(made)} subsets ({', '.join(made)}): pass name=")
            return next(iter(made.values()))
        if name not in made:
            raise ConfigError(f"the spec makes no subset {name!r}; it makes {', '.join(made)}")
        return made[name]

    # ---------------------------------------------------------------------------------- embeddings
    def embeddings(self, key: str, subset: SubsetLike | None = None) -> SubsetEmbeddings:
        """Embeddings ``key`` (``b32_img``, ``l14_txt``, ...) of a subset's members (every member when ``None``):
        ``.batches(rows)`` streams them shard by shard, ``.load()`` gives one array of the subset's rows."""
        return SubsetEmbeddings(self.tables(), key, self._uidset(subset) if subset is not None else None)

    # ---------------------------------------------------------------------------------------- grid
    def grid(self, pairs: Any, scores: Sequence[str] | None = None, *, limit: int = 24, title: str = "",
             seed: int = 0) -> PairGrid:
        """Cards of pairs: a table or DataFrame with a ``uid`` column (its first ``limit`` rows, in order), a
        list of uids, or a subset (a name or a ``UidSet``: ``limit`` of its members drawn with ``seed``).
        ``scores``: the columns shown under each caption (default: every ``clip_*_similarity_score``)."""
        uids = self._grid_uids(pairs, limit, seed)
        dataset = self.dataset()
        if scores is None:
            scores = [c for c in dataset.schema.names if c.startswith("clip_") and c.endswith("_similarity_score")]
        missing = [c for c in scores if c not in dataset.schema.names]
        if missing:
            raise ConfigError(f"no score column {', '.join(missing)}; columns: {', '.join(dataset.schema.names)}")
        found = self._rows_of(dataset, uids, [c for c in ("key", "text") if c in dataset.schema.names] + list(scores))
        rows = [found[u] for u in uids if u in found]
        return PairGrid(self.workspace, rows, scores, title=title)

    # --------------------------------------------------------------------------------------- SQL
    def sql(self, query: str) -> Any:
        """The result of a ``poolsieve sql`` query as a ``pyarrow.Table`` (views: ``scores``, one per subset)."""
        con = workspace_connection(self.workspace)
        try:
            schema, batches = execute(con, query)
            return pa.Table.from_batches(list(batches), schema=schema)
        finally:
            con.close()

    # ---------------------------------------------------------------------------------- helpers
    def _uidset(self, subset: SubsetLike) -> UidSet:
        if isinstance(subset, UidSet):
            return subset
        if isinstance(subset, str):
            return self.subset(subset)
        raise ConfigError(f"a subset is a name or a UidSet, got {type(subset).__name__}")

    def _membership(self, subsets: Iterable[SubsetLike]) -> dict[str, UidSet]:
        out: dict[str, UidSet] = {}
        for i, s in enumerate([subsets] if isinstance(subsets, (str, UidSet)) else subsets):
            out[s if isinstance(s, str) else f"subset_{i}"] = self._uidset(s)
        return out

    def _grid_uids(self, pairs: Any, limit: int, seed: int) -> list[str]:
        if isinstance(pairs, (str, UidSet)):
            members = self._uidset(pairs)
            pick = np.sort(np.random.default_rng(seed).permutation(len(members))[:limit])
            return UidSet(members.keys[pick], sorted_unique=True).to_hex()
        if hasattr(pairs, "column_names") or hasattr(pairs, "columns"):  # arrow table or DataFrame
            column = pairs["uid"]
            pairs = column.to_pylist() if hasattr(column, "to_pylist") else list(column)
        uids = [str(u) for u in list(pairs)[:limit]]
        hex_to_keys(uids, source="grid")  # every uid well formed
        return uids

    @staticmethod
    def _rows_of(dataset: Any, uids: list[str], columns: list[str]) -> dict[str, dict[str, Any]]:
        """``uid -> {shard, uid, columns...}`` for the rows of ``uids`` (their first row each)."""
        found: dict[str, dict[str, Any]] = {}
        wanted = ds.field("uid").isin(uids)
        for fragment in dataset.get_fragments():
            scanner = ds.Scanner.from_fragment(fragment, schema=dataset.schema,
                                               columns=list(dict.fromkeys(["uid", *columns])), filter=wanted)
            for row in scanner.to_table().to_pylist():
                found.setdefault(row["uid"], {**row, "shard": Path(fragment.path).stem})
        return found
