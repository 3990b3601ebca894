"""``shards/download_report.json`` (success rate, failures by reason, this run's throughput) and its
one-screen summary."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from typing import Any

from poolsieve.core.progress import print_summary
from poolsieve.core.workspace import shard_stats_path
from poolsieve.pipeline.download.config import DownloadConfig
from poolsieve.pipeline.download.failures import update_failures
from poolsieve.pipeline.download.plan import shard_digits, whole_shards
from poolsieve.pipeline.download.process import RunOutcome

REPORT_NAME = "download_report.json"


def build_report(ws: Any, cfg: DownloadConfig, planned: int, mode: str, outcome: RunOutcome | None,
                 expected: list[int], distributor: str) -> dict[str, Any]:
    shards_dir = ws.shards_dir
    whole_names = whole_shards(shards_dir)
    whole = set(whole_names)
    samples = successes = 0
    for name in whole_names.values():
        stats = json.loads(shard_stats_path(shards_dir / f"{name}.tar").read_text())
        samples += int(stats.get("count", 0))
        successes += int(stats.get("successes", 0))
    failures = update_failures(shards_dir)
    by_reason = dict(sorted(Counter(failures["reason"]).items(), key=lambda kv: (-kv[1], kv[0])))
    denied = by_reason.get("denied", 0)
    missing = sorted((set(range(planned)) | set(expected)) - whole)
    digits = shard_digits(max([planned - 1, *expected]) if expected else planned - 1)
    run: dict[str, Any] = {"mode": mode, "distributor": distributor, "shards_planned": len(expected)}
    if outcome is not None:
        run.update(shards_done=len(outcome.promoted), samples=outcome.samples, seconds=round(outcome.seconds, 3),
                   samples_per_s=round(outcome.samples / outcome.seconds, 2) if outcome.seconds > 0 else None,
                   stalled=outcome.stalled, runner_exit_code=outcome.returncode)
    else:
        run.update(shards_done=0, samples=0, seconds=0.0, samples_per_s=None, stalled=False)
    return {
        "shards": len(whole),
        "planned_shards": planned,
        "missing_shards": [f"{i:0{digits}d}" for i in missing],
        "samples": samples,
        "successes": successes,
        "success_rate": round(successes / samples, 6) if samples else None,
        "denied": denied,
        "success_rate_excluding_denied": round(successes / (samples - denied), 6) if samples > denied else None,
        "failures": int(len(failures)),
        "failures_by_reason": by_reason,
        "this_run": run,
        "settings": {k: v for k, v in asdict(cfg).items() if k not in ("metadata_source",)},
    }


def print_report(report: dict[str, Any]) -> None:
    """The one-screen summary of a download."""
    if report.get("skipped_shards"):
        print_summary("download", [("metadata files", report["metadata_files"]), ("shards", "skipped (--skip-shards)")])
        return
    run = report["this_run"]
    rate = run.get("samples_per_s")
    rows = [
        ("shards", f"{report['shards']} whole of {report['planned_shards']} planned"
         + (f" (+ {report['shards'] - report['planned_shards']} retry)" if report["shards"] > report["planned_shards"] else "")),
        ("samples", report["samples"]),
        ("success rate", "n/a" if report["success_rate"] is None else f"{report['success_rate']:.2%}"
         + (f" ({report['success_rate_excluding_denied']:.2%} of the not denied)"
            if report["success_rate_excluding_denied"] is not None and report["denied"] else
            " (every sample denied by the network guard: see --allow-network)" if report["denied"] else "")),
        ("failures", ", ".join(f"{k}={v}" for k, v in report["failures_by_reason"].items()) or "none"),
        ("this run", f"{run['mode']}: {run['shards_done']} shards, {run['samples']} samples in {run['seconds']}s"
         + (f" ({rate:,.1f} samples/s)" if rate else "") if run["shards_planned"] else
         f"{run['mode']}: nothing to do" + (" (every shard is whole)" if run["mode"] == "download" else
                                             " (no failed sample to retry)")),
    ]
    if report["missing_shards"]:
        rows.append(("missing shards", short_list(report["missing_shards"])))
    print_summary("download", rows)


def short_list(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")
