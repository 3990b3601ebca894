"""The Training section: loss curves per run and a table of the runs (the Evaluation section: evaluation.py).

Loss points come from each run's ``summary.json`` (``losses``: samples seen and loss, parsed from
open_clip's log by the trainer), or for a run still going from that log itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from poolsieve.core.shown_text import for_html
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.inspect.charts import Series, line_chart_svg
from poolsieve.train.runner_io import parse_train_line


def _log_losses(run_dir: Path) -> list[dict[str, Any]]:
    """Loss points of a run still going (no summary.json yet), from open_clip's ``out.log``."""
    try:
        lines = (run_dir / "out.log").read_text(errors="replace").splitlines()
    except OSError:
        return []
    records = [r for line in lines if (r := parse_train_line(line))]
    return [{"samples_seen": r["epoch"] * r["samples_per_epoch"] + r["epoch_samples"], "loss": r["loss"]}
            for r in records]


def loss_chart(ws_root: Path, runs: dict[str, Any]) -> str:
    """Loss against samples seen, one line per run (a run without summary.json: its log so far)."""
    series = []
    for name, info in runs.items():
        losses = info.get("losses") if "losses" in info else _log_losses(Workspace(ws_root).run_dir(name))
        points = [p for p in losses or [] if isinstance(p, dict)
                  and isinstance(p.get("samples_seen"), (int, float)) and isinstance(p.get("loss"), (int, float))]
        if points:
            series.append(Series(name, np.array([p["loss"] for p in points], dtype=np.float64),
                                 np.array([p["samples_seen"] for p in points], dtype=np.float64)))
    if not series:
        return ""
    return line_chart_svg("training loss per run", series, "samples seen", "contrastive loss")


def runs_table(runs: dict[str, Any]) -> str:
    cols = [("status", "status"), ("scale", "scale"), ("samples seen", "samples_seen"), ("dataset size", "dataset_size"),
            ("passes", "passes_over_data"), ("final loss", "final_loss"), ("seconds", "seconds"),
            ("samples/s", "samples_per_second")]
    out = ['<table class="results"><thead><tr><th>run</th>' + "".join(f'<th class="num">{c}</th>' for c, _ in cols)
           + "</tr></thead><tbody>"]
    for name, info in runs.items():
        cells = []
        for _, key in cols:
            v = info.get(key, "done" if key == "status" else None)
            cells.append(f"{v:,.4g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int)
                         else for_html(str(v)) if v is not None else "")
        out.append(f"<tr><td>{for_html(name)}</td>" + "".join(f'<td class="num">{c}</td>' for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)
