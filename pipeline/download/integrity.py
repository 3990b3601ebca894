"""No sample lost silently: every input row of a shard ends up in the shard's parquet, and a run that
fetched too little fails.

img2dataset writes one parquet row per input url, except when its writer fails on a sample: it then
prints the error to its log and goes on, and the sample is in neither the tar nor the parquet (its
stats even count it as a success). Before a shard is promoted, ``complete_shard`` compares the
shard's parquet with the input rows that img2dataset gave that shard (each input file is cut into
runs of ``samples_per_shard`` rows, shard ids running on across files) and adds each missing row with
status ``failed_to_write``, so it is a recorded failure (reason ``not_written``) that
``--retry-failed`` fetches again; the stats are recounted from the parquet.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from poolsieve.core.errors import PoolsieveError
from poolsieve.core.formats import STATUS_SUCCESS, atomic_path, write_json

NOT_WRITTEN_STATUS = "failed_to_write"
NOT_WRITTEN_ERROR = "not written: img2dataset's writer failed on this sample (see its log, .download_runner.log)"
CARRIED = {"uid": "uid", "url": "url", "caption": "text", "face_bboxes": "face_bboxes"}  # parquet <- input


class ShardInputs:
    """The input rows of each shard id, as img2dataset's reader cuts them."""

    def __init__(self, inputs: list[str | Path], per_shard: int, start_id: int):
        self.per_shard = per_shard
        self.spans: dict[int, tuple[Path, int, int]] = {}
        shard_id = start_id
        for path in map(Path, inputs):
            rows = pq.read_metadata(path).num_rows
            for k in range(math.ceil(rows / per_shard)):
                self.spans[shard_id] = (path, k * per_shard, min(rows, (k + 1) * per_shard))
                shard_id += 1
        self._cached: tuple[Path, Any] | None = None

    @classmethod
    def from_job(cls, job: dict[str, Any]) -> ShardInputs:
        return cls(job["inputs"], job["img2dataset"]["number_sample_per_shard"], job["start_shard_id"])

    def rows(self, shard_id: int, columns: list[str]) -> Any | None:
        """The shard's input rows (arrow table of ``columns`` that the file has), or None if unknown."""
        if shard_id not in self.spans:
            return None
        path, lo, hi = self.spans[shard_id]
        if self._cached is None or self._cached[0] != path:
            names = pq.read_schema(path).names
            self._cached = (path, pq.read_table(path, columns=[c for c in columns if c in names]))
        return self._cached[1].slice(lo, hi - lo)


def sample_key(shard_id: int, index: int, per_shard: int, shard_digits: int) -> str:
    """img2dataset's sample key: the shard id, then the index in the shard on ceil(log10(per_shard)) digits."""
    digits = math.ceil(math.log10(per_shard))
    return f"{10 ** digits * shard_id + index:0{digits + shard_digits}d}"


def complete_shard(parquet: Path, stats_path: Path, shard_id: int, inputs: ShardInputs) -> int:
    """Add the input rows missing from a finished shard's parquet as ``failed_to_write`` rows and
    recount its stats (both rewritten atomically). Returns the number of rows added."""
    table = pq.read_table(parquet)
    source = inputs.rows(shard_id, list(CARRIED.values()))
    if source is None:
        return 0
    digits = len(parquet.stem)
    keys = [sample_key(shard_id, i, inputs.per_shard, digits) for i in range(source.num_rows)]
    present = set(table.column("key").to_pylist())
    missing = [i for i, k in enumerate(keys) if k not in present]
    if not missing:
        return 0
    picked = source.take(pa.array(missing, type=pa.int64()))
    given = {"key": [keys[i] for i in missing], "status": [NOT_WRITTEN_STATUS] * len(missing),
             "error_message": [NOT_WRITTEN_ERROR] * len(missing)}
    columns = []
    for field in table.schema:
        src = CARRIED.get(field.name)
        if field.name in given:
            columns.append(pa.array(given[field.name], type=field.type))
        elif src in picked.column_names:
            columns.append(picked.column(src).cast(field.type))
        else:
            columns.append(pa.nulls(len(missing), type=field.type))
    added = pa.Table.from_arrays(columns, schema=table.schema)
    full = pa.concat_tables([table, added]).sort_by("key")
    with atomic_path(parquet) as tmp:
        pq.write_table(full, tmp)
    stats = json.loads(stats_path.read_text())
    status = full.column("status").to_pylist()
    counts = Counter(status)
    status_dict = dict(stats.get("status_dict") or {})
    status_dict[STATUS_SUCCESS] = counts.get(STATUS_SUCCESS, 0)
    status_dict[NOT_WRITTEN_ERROR] = counts.get(NOT_WRITTEN_STATUS, 0)
    stats.update(count=len(status), successes=counts.get(STATUS_SUCCESS, 0),
                 failed_to_download=counts.get("failed_to_download", 0),
                 failed_to_resize=counts.get("failed_to_resize", 0),
                 failed_to_write=counts.get(NOT_WRITTEN_STATUS, 0), status_dict=status_dict)
    write_json(stats_path, stats)
    return len(missing)


def check_success_rate(report: dict[str, Any], min_rate: float, shards_dir: Path) -> None:
    """Raise one line when the pool's success rate is below ``min_rate`` (a dead server, a deny list
    that refuses the whole pool, a writer that dropped everything)."""
    rate, samples = report.get("success_rate"), report.get("samples") or 0
    if rate is None or not samples or rate >= min_rate:
        return
    reasons = ", ".join(f"{k}={v}" for k, v in list(report.get("failures_by_reason", {}).items())[:4]) or "none"
    raise PoolsieveError(f"{shards_dir}: only {rate:.2%} of {samples} samples were fetched, below the minimum "
                         f"{min_rate:.2%} (failures: {reasons}); see download_report.json. "
                         "--min-success-rate lowers the minimum")
