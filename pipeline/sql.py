"""SQL over a workspace with DuckDB: ``poolsieve sql -w pool "SELECT ..."`` (``pip install "poolsieve[sql]"``).

The query sees these views:

* ``scores``: every row of every score table (``scores/*.parquet``), all their columns, plus one boolean
  column ``in_NAME`` per subset ``subsets/NAME.npy`` (true where the row's uid is in the subset). Rows
  whose image did not decode are there too: pool members are ``status = 'success'``.
* ``NAME``, one per subset: the ``scores`` rows of its uids (quote names that are not plain words:
  ``"basic-v2"``). A subset whose name SQL already has (``scores``) keeps only its column, and of two
  names that differ only in case (SQL ignores case) the second is left out; each with a warning.

Examples::

    poolsieve sql -w pool "SELECT language, count(*) FROM scores WHERE status = 'success' GROUP BY 1"
    poolsieve sql -w pool "SELECT count(*) FROM clip30 WHERE NOT in_basic"
    poolsieve sql -w pool "SELECT uid, text FROM clip30 ORDER BY 1 LIMIT 20" --out lowest.csv

The result is printed (the first ``--max-rows`` rows, then the count of all of them), or streamed to
``--out FILE.parquet`` or ``FILE.csv`` (an existing file is replaced only with ``--overwrite``).

A workspace may come from someone else, and DuckDB can read and write any path. So poolsieve reads the
files (score tables checked as ``core/score_dataset.py`` says, subset files against their records) and
hands DuckDB only those rows: before the query runs, DuckDB's file system access, extension loading and
scans of Python variables are switched off and its configuration locked. A query that names a file
(``read_csv('/etc/passwd')``, ``COPY ... TO``, ``ATTACH``) fails in one line, as does a malformed one.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from poolsieve.core.errors import ConfigError, InputError, PoolsieveWarning
from poolsieve.core.formats import atomic_path
from poolsieve.core.names import is_valid_name
from poolsieve.core.progress import print_summary
from poolsieve.core.runtime import Runtime
from poolsieve.core.score_dataset import score_dataset
from poolsieve.core.stage import Stage, option
from poolsieve.core.subsets import read_subset_snapshot
from poolsieve.core.uids import UidSet
from poolsieve.core.untrusted_files import regular_file_size
from poolsieve.core.workspace import Workspace

SCORES_VIEW = "scores"
MEMBER_PREFIX = "in_"
BATCH_ROWS = 65_536
CELL_CHARS = 60
INSTALL_HINT = "poolsieve sql needs DuckDB, an optional extra: pip install \"poolsieve[sql]\""
# set before the query runs, then locked: the query reads only what poolsieve registered
LOCKDOWN = ("SET enable_external_access = false", "SET autoinstall_known_extensions = false",
            "SET autoload_known_extensions = false", "SET python_enable_replacements = false",
            "SET lock_configuration = true")


@dataclass
class SqlConfig:
    """The ``sql:`` section (the query is the command's argument)."""

    query: str | None = option(None, "the SQL query", cli=False)
    out: str | None = option(None, "write the result to this .parquet or .csv file instead of printing it",
                             metavar="FILE")
    max_rows: int = option(40, "rows printed (the count of all rows follows)")


def load_duckdb() -> Any:
    """The ``duckdb`` module, or a one-line ``ConfigError`` saying how to install it."""
    try:
        import duckdb
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return duckdb


# ------------------------------------------------------------------------------ what the query sees
def saved_subsets(ws: Workspace) -> dict[str, UidSet]:
    """Every ``subsets/NAME.npy`` of the workspace, by name: regular files, checked against their records.
    A file whose name poolsieve would not give a subset is left out with a warning."""
    out: dict[str, UidSet] = {}
    folder = ws.subsets_dir
    for path in sorted(folder.glob("*.npy")) if folder.is_dir() else []:
        if path.name.startswith("."):
            continue
        if not is_valid_name(path.stem):
            warnings.warn(f"{ascii(path.name)}: not a subset name poolsieve makes; left out", PoolsieveWarning,
                          stacklevel=2)
            continue
        out[path.stem] = read_subset(path)
    return out


def read_subset(path: Path) -> UidSet:
    """One subset file as a uid set (a regular file, DataComp's format, matching its record)."""
    regular_file_size(path)  # a FIFO or a folder is refused here, without blocking
    return UidSet.from_pairs(read_subset_snapshot(path).pairs, sorted_unique=True)


def quote(name: str) -> str:
    """A SQL identifier (subset names never hold a double quote: ``core/names.py``)."""
    return '"' + name.replace('"', '""') + '"'


def connect(dataset: Any, subsets: Mapping[str, UidSet]) -> Any:
    """A DuckDB connection whose views are the ``scores`` dataset and the ``subsets``, locked down (see above)."""
    duckdb = load_duckdb()
    con = duckdb.connect(":memory:")
    con.register("_score_tables", dataset)
    subsets = _distinct(subsets)
    member_columns = []
    for i, (name, uids) in enumerate(subsets.items()):
        con.register(f"_subset_{i}", pa.table({"uid": pa.array(uids.to_hex(), pa.string())}))
        member_columns.append(f"t.uid IN (SELECT uid FROM _subset_{i}) AS {quote(MEMBER_PREFIX + name)}")
    con.execute(f"CREATE VIEW {SCORES_VIEW} AS SELECT {', '.join(['t.*', *member_columns])} FROM _score_tables t")
    for name in subsets:
        try:
            con.execute(f"CREATE VIEW {quote(name)} AS SELECT * FROM {SCORES_VIEW} WHERE {quote(MEMBER_PREFIX + name)}")
        except duckdb.CatalogException:  # a name SQL already has (scores): its in_NAME column says it all
            warnings.warn(f"subset {name} has no view of its own (the name is taken); use {MEMBER_PREFIX}{name}",
                          PoolsieveWarning, stacklevel=2)
    for statement in LOCKDOWN:
        con.execute(statement)
    return con


def _distinct(subsets: Mapping[str, UidSet]) -> dict[str, UidSet]:
    """The subsets whose names differ from every earlier one's in more than case (SQL names ignore case)."""
    out: dict[str, UidSet] = {}
    for name, uids in subsets.items():
        earlier = next((n for n in out if n.lower() == name.lower()), None)
        if earlier is None:
            out[name] = uids
        else:
            warnings.warn(f"subset {name} is left out of SQL: its name differs from {earlier}'s only in case",
                          PoolsieveWarning, stacklevel=2)
    return out


def workspace_connection(ws: Workspace) -> Any:
    """``connect`` over the workspace's score tables and saved subsets."""
    load_duckdb()  # before reading anything: a missing extra is the first thing said
    return connect(score_dataset(ws.score_tables()), saved_subsets(ws))


def execute(con: Any, query: str) -> tuple[Any, Iterator[Any]]:
    """(the arrow schema of ``query``'s result, its record batches as they come); a query DuckDB refuses
    (malformed, an unknown name, a file named, an error while it runs) is one ``ConfigError`` line."""
    duckdb = load_duckdb()
    try:
        relation = con.sql(query)
        if relation is None:  # a statement without a result
            return pa.schema([]), iter(())
        # DuckDB 2 names it to_arrow_reader; 1.x fetch_record_batch
        reader = (getattr(relation, "to_arrow_reader", None) or relation.fetch_record_batch)(BATCH_ROWS)
    except duckdb.Error as e:
        raise query_error(e) from None

    def batches() -> Iterator[Any]:
        try:
            yield from reader
        except (duckdb.Error, pa.ArrowException) as e:
            raise query_error(e) from None

    return reader.schema, batches()


def query_error(error: BaseException) -> ConfigError:
    text = str(error).strip()
    return ConfigError(f"query failed: {printable(text.splitlines()[0]) if text else type(error).__name__}")


# ------------------------------------------------------------------------------------ the stage
def run_sql(ws: Workspace, cfg: SqlConfig, runtime: Runtime, *, overwrite: bool = False) -> dict[str, Any]:
    """Run ``cfg.query``; return ``{rows, columns, out, seconds, shown}`` (``shown``: the printed rows)."""
    if not cfg.query or not cfg.query.strip():
        raise ConfigError("no query: poolsieve sql -w WORKSPACE \"SELECT ...\"")
    if cfg.max_rows < 0:
        raise ConfigError(f"--max-rows must be 0 or more, got {cfg.max_rows}")
    out = Path(cfg.out).expanduser() if cfg.out else None
    if out is not None:
        _check_out(out, overwrite)
    start = time.perf_counter()
    con = workspace_connection(ws)
    try:
        schema, batches = execute(con, cfg.query)
        summary = _write(schema, batches, out) if out is not None else _preview(schema, batches, cfg.max_rows)
    finally:
        con.close()
    return {**summary, "out": str(out) if out else None, "seconds": round(time.perf_counter() - start, 3)}


def _check_out(out: Path, overwrite: bool) -> None:
    if out.suffix.lower() not in (".parquet", ".csv"):
        raise ConfigError(f"{out}: --out writes .parquet or .csv files")
    if out.is_dir():
        raise InputError(out, "is a folder; --out names a file")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise InputError(out, "exists; pass --overwrite to replace it")


def _write(schema: Any, batches: Iterator[Any], out: Path) -> dict[str, Any]:
    """Stream the result into ``out`` (parquet or CSV), renamed into place when whole."""
    if not schema.names:
        raise ConfigError("the query returned no result to write (a SELECT returns one)")
    rows = 0
    with atomic_path(out) as tmp:
        try:
            writer = pq.ParquetWriter(tmp, schema) if out.suffix.lower() == ".parquet" else pacsv.CSVWriter(tmp, schema)
            with writer:
                for batch in batches:
                    writer.write_batch(batch)
                    rows += batch.num_rows
        except pa.ArrowNotImplementedError as e:
            raise ConfigError(f"{out}: cannot write this result as CSV ({e}); write .parquet instead") from None
    return {"rows": rows, "columns": schema.names, "shown": None}


def _preview(schema: Any, batches: Iterator[Any], max_rows: int) -> dict[str, Any]:
    """The first ``max_rows`` rows as printable cells, and the count of all rows."""
    rows, shown = 0, []
    for batch in batches:
        if len(shown) < max_rows:
            head = batch.slice(0, max_rows - len(shown))
            shown += [[cell(v) for v in row] for row in zip(*(c.to_pylist() for c in head.columns), strict=True)]
        rows += batch.num_rows
    numeric = [_is_number(f.type) for f in schema]
    return {"rows": rows, "columns": schema.names, "shown": {"rows": shown, "numeric": numeric}}


def _is_number(t: Any) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def cell(value: Any) -> str:
    """A value as printed: control characters escaped (captions come from strangers), long text cut."""
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value + 0.0:.6g}"  # + 0.0: no "-0"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(cell(v) for v in value) + "]"
    if isinstance(value, bytes):
        value = value.hex()
    text = printable(str(value))
    return text if len(text) <= CELL_CHARS else text[:CELL_CHARS - 1] + "…"


def printable(text: str) -> str:
    """``text`` with every control character escaped (``\\x1b``, ``\\n``): safe to print on a terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def render_table(columns: list[str], rows: list[list[str]], numeric: list[bool]) -> str:
    """Rows of cells under their column names, numbers right-aligned."""
    header = [cell(c) for c in columns]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True))

    return "\n".join(text.rstrip() for text in [line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def print_report(summary: dict[str, Any]) -> None:
    shown = summary.get("shown")
    if shown is not None and summary["columns"]:
        print(render_table(summary["columns"], shown["rows"], shown["numeric"]))
        if summary["rows"] > len(shown["rows"]):
            print(f"... {summary['rows'] - len(shown['rows']):,} more rows (--max-rows, or --out FILE)")
    rows = [("rows", f"{summary['rows']:,}"), ("time", f"{summary['seconds']:.2f} s")]
    if summary.get("out"):
        rows.insert(1, ("written to", summary["out"]))
    print_summary("sql", rows)


EXAMPLES = """views: scores (every score-table row, plus in_NAME per subset), and NAME per subset
examples:
  poolsieve sql -w pool "SELECT language, count(*) FROM scores WHERE status = 'success' GROUP BY 1"
  poolsieve sql -w pool "SELECT count(*) FROM clip30 WHERE NOT in_basic"
  poolsieve sql -w pool "SELECT uid, text FROM clip30 ORDER BY 1 LIMIT 20" --out lowest.csv"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """CLI-only: the query, the command's one argument."""
    p.add_argument("query", nargs="?", help="the SQL query (views: scores, and one per subset)")
    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def cli_action(ctx: Any, args: argparse.Namespace) -> int:
    """The query comes from the command line (the config section holds only the other options)."""
    ws = ctx.workspace()
    cfg = STAGE.config_from(ctx.section(STAGE.name), args, query=args.query)
    print_report(run_sql(ws, cfg, ctx.runtime, overwrite=ctx.overwrite))
    return 0


STAGE = Stage("sql", SqlConfig, run=run_sql,
              report=print_report, reads=("scores/", "subsets/"), writes=())
