"""poolsieve from Python: a workspace's score tables, subsets, filters, embeddings and pairs, in a notebook.

```python
import poolsieve.api as ps

ws = ps.open("poolsieve-quickstart")
ws.subsets()                                   # ['basic', 'clip30', 'no_filter']
df = ws.to_pandas(["uid", "text", "clip_poolsieve_tiny_similarity_score"], subset="clip30",
                  membership=["basic"])        # clip30's rows, with an in_basic column
both = ws.subset("clip30") & ws.subset("basic")            # UidSet: &, |, -, len, in, to_hex()
trial = ws.filter("basic & clip_score(column=clip_poolsieve_tiny_similarity_score, fraction=0.2)")
vectors = ws.embeddings("poolsieve_tiny_img", subset=both).load().vectors   # only these rows are read
ws.grid(df.head(12), title="clip30")           # thumbnails, captions, scores (Jupyter shows it)
ws.sql("SELECT count(*) FROM clip30 WHERE NOT in_basic")     # DuckDB (pip install "poolsieve[sql]")
```

Everything here reads; nothing writes (``poolsieve filter`` saves a subset). The objects are the ones
the commands use: ``UidSet`` (``core/uids.py``), the score tables' checked reader, the filter stage's
evaluator, the sql stage's views, the report's cards.
"""

from __future__ import annotations

from pathlib import Path

from poolsieve.core.uids import UidSet

from .embeddings import EmbeddingBatch, SubsetEmbeddings
from .grid import PairGrid
from .workspace import PoolWorkspace

__all__ = ["EmbeddingBatch", "PairGrid", "PoolWorkspace", "SubsetEmbeddings", "UidSet", "open"]


def open(path: str | Path) -> PoolWorkspace:  # noqa: A001 - poolsieve.api.open reads like the builtin it mirrors
    """The workspace at ``path``, for reading (one line naming it when it does not exist)."""
    return PoolWorkspace(path)
