"""What the terminal shows of a subset's steps: how many pairs each step keeps and why the others go.

A subset's record keeps every step of its spec (``filters/algebra.py``): a filter call's count and the
details the filter reported (a cut's ``threshold``, decontaminate's exact and near copies in a one-line
``summary``), ``and`` / ``or``'s running count after each operand, ``not``'s pool and result. A dry run
(``poolsieve filter --dry-run``) prints them all, one line a step; a real run prints the filters' one-line
summaries under its table.
"""

from __future__ import annotations

from typing import Any

from poolsieve.core.progress import format_table, print_summary
from poolsieve.core.shown_text import for_terminal
from poolsieve.filters.registry import FEW_KEPT


def step_note(step: dict[str, Any]) -> str:
    """The filter's own word on a step: its ``summary``, else the threshold it cut at (unless the step gives
    it); ``""`` if none."""
    details = step.get("details") or {}
    if isinstance(details.get("summary"), str):
        return details["summary"]
    value = details.get("threshold")
    given = "threshold=" in str(step.get("step"))
    return f"threshold {value:.6g}" if isinstance(value, (int, float)) and not given else ""


def _share(count: int, members: int) -> str:
    return f"{100 * count / members:.1f}%" if members else "-"


def step_line(step: dict[str, Any], members: int) -> str:
    """One step: what it keeps and why the rest goes (the running count of an ``and``/``or``, what a filter drops)."""
    count = int(step["count"])
    line = f"{for_terminal(step['step'])}: keeps {count:,} ({_share(count, members)})"
    if step.get("reused"):
        return line + ", as above"
    counts = step.get("counts") or []
    if step.get("op") == "not" and len(counts) == 2:
        line += f": the pool's {counts[0]:,} minus {counts[0] - count:,}"
    elif step.get("op") in ("and", "or"):
        line += "; after each part: " + " -> ".join(f"{c:,}" for c in counts)
    else:
        line += f", drops {members - count:,}"
    note = step_note(step)
    warning = (step.get("details") or {}).get("warning")
    if note:
        line += f"; {for_terminal(note)}"
    if warning and not (step.get("details") or {}).get("allow_small"):
        line += f" [under {FEW_KEPT:.0%} of the pool]"
    return line


def subset_notes(steps: list[dict[str, Any]]) -> list[str]:
    """``STEP: SUMMARY`` for every step whose filter reported a one-line summary (decontaminate's exact/near)."""
    notes = [f"{step['step']}: {step['details']['summary']}" for step in steps
             if not step.get("reused") and isinstance((step.get("details") or {}).get("summary"), str)]
    return list(dict.fromkeys(notes))


def print_dry_run(results: dict[str, Any]) -> None:
    """The dry run's screen: a table of the subsets, then each subset's steps, one line a step."""
    rows = [(name, r["count"], f"{100 * r['count'] / r['members']:.2f}%" if r["members"] else "",
             "refused" if r.get("refused") else "written", f"{r['seconds']:.2f}") for name, r in results.items()]
    print(format_table(["subset", "uids", "of pool", "would be", "seconds"], rows))
    for name, r in results.items():
        print(f"\n{for_terminal(name)} = {for_terminal(r['expression'])}: keeps {r['count']:,} of {r['members']:,}")
        for step in r["steps"]:
            if "count" in step:
                print(f"  {step_line(step, r['members'])}")
        if r.get("refused"):
            print(f"  refused: {for_terminal(r['refused'])}")
    print_summary("filter (dry run)", [("subsets", len(results)), ("written", "nothing"),
                                       ("time", f"{sum(r['seconds'] for r in results.values()):.2f} s")])
