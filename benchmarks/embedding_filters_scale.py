"""Scale and cluster modes of ``embedding_filters.py``: how the embedding filters' memory and time grow
with the pool, on one machine and over a local multi-node Ray.

Scale mode (``--scale 1000000,2000000,4000000``): each size's pool is generated once on disk (10,000 rows
per table, ``rows / 50`` topics, in ``--workdir``/rows-N, or ``--workdir`` itself when it holds a pool of
that size); with ``--prefix-pools`` the largest pool alone, read through its first tables at the smaller
sizes (fewer rows per topic there: D2's calibration then needs a wider probe). Each filter runs at every
size in a fresh child process. ``--previous LOG`` adds the result lines of an earlier scale run's log
(sizes this run did not measure; the table says which run each row comes from; a line may start with
a time stamp) to the fit. Printed
per filter and size: wall, CPU, peak resident memory of the whole process tree (the child's ``VmHWM``,
or the tree's summed ``VmRSS`` sampled every 0.2 s when it starts processes), peak per row; then per
filter a least-squares line ``peak = base + slope * rows`` over the sizes, and its value at DataComp's
small (12.8M) and medium (128M) scales. ``--memory-budget`` is handed to the filters. With
``--sample-rows N`` the k-means filters train on N rows at every size (a sample grows the peak by 3 KB
per sample row at 768-d until half the budget; the fit then shows what grows with the pool itself).

Cluster mode (``--cluster 2,4 --cluster-rows 250000,500000``): the child process starts a Ray cluster
on this machine of that many raylets (``ray.cluster_utils.Cluster``: one CPU and ``--node-memory`` of
Ray's ``memory`` resource each; the filters' budget is the same), runs the filter on it as a driver,
and samples each node's resident memory (its raylet and the workers under it). Printed: the driver's
peak and every node's peak, for each node count and size: per-node peaks fall as nodes are added at a
fixed size; the driver's stays flat as the rows double.

    python benchmarks/embedding_filters.py --scale 1000000,2000000,4000000 --workdir /tmp/bench-4m
    python benchmarks/embedding_filters.py --scale 400000 --memory-budget 1GiB --prefix-pools --workdir /tmp/bench-4m
    python benchmarks/embedding_filters.py --scale 2000000 --previous 1m.log,4m.log --workdir /tmp/bench-4m
    python benchmarks/embedding_filters.py --cluster 2,4 --cluster-rows 250000,500000 --workdir /tmp/bench-4m
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROWS_PER_TABLE = 10_000
PROJECT_TO = {"DataComp small (12.8M)": 12_800_000, "DataComp medium (128M)": 128_000_000}
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------ process trees
def children_of() -> dict[int, list[int]]:
    """Every process's children, from ``/proc``."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            out.setdefault(ppid, []).append(int(entry))
    return out


def tree(root: int, kids: dict[int, list[int]]) -> list[int]:
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += kids.get(pid, [])
    return pids


def rss_bytes(pid: int) -> int:
    return resident_pages(pid)[0] * PAGE


def resident_pages(pid: int) -> tuple[int, int]:
    """``(resident, of which file-backed or shared)`` pages of ``pid`` (``/proc/pid/statm``)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            fields = f.read().split()
        return int(fields[1]), int(fields[2])
    except (OSError, ValueError, IndexError):
        return 0, 0


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS
    except (OSError, ValueError, IndexError):
        return 0.0


class TreeMonitor:
    """Samples the summed resident memory of process trees every ``period`` seconds: ``groups`` maps a
    name to a root pid (default: the one root given); ``peaks`` the largest sum seen per group. With
    ``trace``, about once a second a line ``unix time, group, resident bytes, of which file-backed``
    is appended to that file (to find when the peak came, and whether mapped files make it)."""

    def __init__(self, root: int, groups: dict[str, int] | None = None, period: float = 0.2,
                 trace: Path | None = None):
        self.groups = groups or {"tree": root}
        self.peaks = {name: 0 for name in self.groups}
        self.cpu = {name: 0.0 for name in self.groups}
        self.period = period
        self.trace = trace
        self._traced = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period)

    def sample(self) -> None:
        kids = children_of()
        now = time.time()
        lines = []
        for name, root in self.groups.items():
            pids = tree(root, kids)
            pages = [resident_pages(p) for p in pids]
            resident = sum(r for r, _ in pages) * PAGE
            self.peaks[name] = max(self.peaks[name], resident)
            self.cpu[name] = max(self.cpu[name], sum(cpu_seconds(p) for p in pids))
            lines.append(f"{now:.1f}\t{name}\t{resident}\t{sum(s for _, s in pages) * PAGE}\n")
        if self.trace is not None and now - self._traced >= 1.0:
            self._traced = now
            with open(self.trace, "a") as f:
                f.writelines(lines)

    @property
    def peak_gib(self) -> float:
        return self.peaks.get("tree", 0) / 2**30

    @property
    def cpu_s(self) -> float:
        return self.cpu.get("tree", 0.0)

    def __enter__(self) -> TreeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------------- scale mode
def fit_line(rows: list[int], peaks: list[float]) -> tuple[float, float]:
    """Least squares ``peak = base + slope * rows`` (one size: slope from the origin)."""
    if len(rows) == 1:
        return 0.0, peaks[0] / rows[0]
    slope, base = np.polyfit(np.asarray(rows, float), np.asarray(peaks, float), 1)
    return float(base), float(slope)


def pool_root(workdir: Path, rows: int) -> Path:
    """Where scale mode keeps its pool of ``rows`` rows: ``workdir`` itself when it holds a pool of exactly
    that size (generated by a plain run), else ``workdir/rows-{rows}``."""
    marker = workdir / "generated.json"
    if marker.exists() and json.loads(marker.read_text()).get("rows") == rows:
        return workdir
    return workdir / f"rows-{rows}"


def previous_results(paths: str, filters: list[str]) -> list[dict]:
    """The scale-mode result lines (one JSON object per run) of earlier logs, for ``filters``."""
    out = []
    for path in paths.split(","):
        for line in Path(path).read_text().splitlines():
            stamp, brace, rest = line.partition("{")
            if not brace or (stamp.strip() and not stamp.strip().isdigit()):  # a line may start with a time stamp
                continue
            res = json.loads(brace + rest)
            if res.get("filter") in filters and "rows" in res and "tree_peak_gib" in res and "nodes" not in res:
                out.append({**res, "earlier": path})
    return out


def scale_mode(args: argparse.Namespace, argv: list[str]) -> list[dict]:
    import embedding_filters as bench

    sizes = [int(v) for v in args.scale.split(",")]
    filters = args.filters.split(",")
    base_argv = _without(argv, ("--scale", "--max-tables", "--impl", "--cluster", "--cluster-rows", "--previous"))
    if args.prefix_pools:  # one pool of the largest size; the smaller sizes read its first tables
        largest = max(sizes)
        roots = dict.fromkeys(sizes, args.workdir)
        specs = [(args.workdir, largest)]
    else:  # each size its own pool, so that every size has the same rows per topic (rows / 50 topics)
        roots = {rows: pool_root(args.workdir, rows) for rows in sizes}
        specs = [(roots[rows], rows) for rows in sizes]
    for root, rows in specs:
        t0 = time.perf_counter()
        bench.generate_pool(root, rows, -(-rows // ROWS_PER_TABLE), args.dim, noise=args.noise,
                            prefix_ok=True, regenerate=args.regenerate)
        print(f"pool: {rows:,} rows at {root} (ready in {time.perf_counter() - t0:.0f}s)", flush=True)
    results = []
    for rows in sizes:
        extra = ["--max-tables", str(-(-rows // ROWS_PER_TABLE)), "--workdir", str(roots[rows])]
        if "d2_pruning" in filters and args.recall_sample:
            import subprocess

            subprocess.run([sys.executable, bench.__file__, "--exact", *base_argv, *extra], check=True)
        for name in filters:
            res = bench.run_child(name, "default", args, base_argv, tuple(extra))
            if res is None:
                continue
            res["rows"] = rows
            results.append(res)
            print(json.dumps(res), flush=True)
    if args.previous:  # earlier runs of sizes this one did not measure
        done = {(r["filter"], r["rows"]) for r in results}
        results += [r for r in previous_results(args.previous, filters) if (r["filter"], r["rows"]) not in done]
        results.sort(key=lambda r: (filters.index(r["filter"]), r["rows"]))
    print_scale(results, args)
    return results


def print_scale(results: list[dict], args: argparse.Namespace) -> None:
    print(f"\nload average now: {' '.join(f'{v:.1f}' for v in os.getloadavg())} ({os.cpu_count()} cores); "
          f"memory budget: {args.memory_budget or 'default'}")
    print("filter          rows    wall_s    cpu_s  peak_GiB  bytes/row  recall@k  load@start  run")
    for r in results:
        rec = f"{r['recall_at_k']:.3f}" if "recall_at_k" in r else "-"
        run = f"earlier: {r['earlier']}" if "earlier" in r else "this one"
        print(f"{r['filter']:<12} {r['rows']:>8,} {r['wall_s']:8.1f} {r['tree_cpu_s']:8.1f} {r['tree_peak_gib']:8.2f} "
              f"{r['tree_peak_gib'] * 2**30 / r['rows']:10.0f}  {rec:>8}  {r['load_avg_start']:9.1f}  {run}")
    print("\nfitted peak = base + slope * rows (whole process tree), projected:")
    print("filter        base_GiB  slope_B/row  " + "  ".join(f"{k:>24}" for k in PROJECT_TO)
          + "  wall_s/M rows (largest)")
    for name in dict.fromkeys(r["filter"] for r in results):
        mine = [r for r in results if r["filter"] == name]
        base, slope = fit_line([r["rows"] for r in mine], [r["tree_peak_gib"] * 2**30 for r in mine])
        proj = "  ".join(f"{(base + slope * n) / 2**30:21.2f} GiB" for n in PROJECT_TO.values())
        big = max(mine, key=lambda r: r["rows"])
        print(f"{name:<12} {base / 2**30:9.2f} {slope:12.1f}  {proj}  {big['wall_s'] / big['rows'] * 1e6:10.1f}")


# ------------------------------------------------------------------------------- cluster mode
def cluster_mode(args: argparse.Namespace, argv: list[str]) -> list[dict]:
    import embedding_filters as bench

    nodes = [int(v) for v in args.cluster.split(",")]
    sizes = [int(v) for v in (args.cluster_rows or str(args.rows)).split(",")]
    largest = max(sizes)
    bench.generate_pool(args.workdir, largest, -(-largest // ROWS_PER_TABLE), args.dim, noise=args.noise,
                        prefix_ok=True, regenerate=args.regenerate)
    base_argv = _without(argv, ("--scale", "--max-tables", "--impl", "--cluster", "--cluster-rows", "--ray"))
    results = []
    for count in nodes:
        for rows in sizes:
            extra = ("--max-tables", str(-(-rows // ROWS_PER_TABLE)), "--nodes-one", str(count),
                     "--recall-sample", "0")
            for name in args.filters.split(","):
                res = bench.run_child(name, "default", args, base_argv, extra)
                if res is None:
                    continue
                res.update(rows=rows, nodes=count)
                results.append(res)
                print(json.dumps(res), flush=True)
    print(f"\nload average now: {' '.join(f'{v:.1f}' for v in os.getloadavg())}; each node: 1 CPU, "
          f"{args.node_memory} (Ray memory resource and the filters' budget)")
    print("filter        nodes     rows   wall_s  driver_GiB  per-node peak GiB (head first)")
    for r in results:
        per_node = " ".join(f"{v:.2f}" for v in r["node_peaks_gib"])
        print(f"{r['filter']:<12} {r['nodes']:>5} {r['rows']:>8,} {r['wall_s']:8.1f} {r['driver_peak_gib']:11.2f}  {per_node}")
    return results


def run_on_cluster(name: str, args: argparse.Namespace) -> dict:
    """In the child: start ``--nodes-one`` raylets, run filter ``name`` as a driver, sample every node."""
    import embedding_filters as bench
    import ray
    from ray.cluster_utils import Cluster

    from poolsieve.core.runtime import Runtime
    from poolsieve.filters._budget import parse_size
    from poolsieve.filters.registry import get_filter

    limit = parse_size(args.node_memory)
    args.memory_budget = args.memory_budget or args.node_memory
    node_args = {"num_cpus": 1, "memory": limit, "object_store_memory": 256 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={
        **node_args, "include_dashboard": False, "_system_config": {"memory_monitor_refresh_ms": 0}})
    nodes = [cluster.head_node] + [cluster.add_node(**node_args) for _ in range(args.nodes_one - 1)]
    cluster.wait_for_nodes()
    raylets = {f"node{i}": n.all_processes["raylet"][0].process.pid for i, n in enumerate(nodes)}
    try:
        runtime = Runtime(executor="ray", address=cluster.address)
        pool = bench.open_pool(args, runtime)
        params = bench.filter_params(name, args, pool.member_count() if args.sample_rows else None)
        with TreeMonitor(os.getpid(), raylets, trace=args.rss_trace) as monitor:
            t0 = time.perf_counter()
            kept = get_filter(name)(pool, **params)
            wall = time.perf_counter() - t0
            monitor.sample()
        runtime.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()
    return {"filter": name, "impl": "default", "params": params, "wall_s": wall, "kept": len(kept),
            "kept_file": "", "cpu_s": sum(monitor.cpu.values()), "peak_rss_gib": bench.peak_rss_gib(),
            "driver_peak_gib": bench.peak_rss_gib(), "load_avg_start": os.getloadavg()[0],
            "node_peaks_gib": [monitor.peaks[k] / 2**30 for k in raylets]}


def _without(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """``argv`` less ``flags`` and their values."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in flags:
            skip = True
            continue
        if any(a.startswith(f + "=") for f in flags):
            continue
        out.append(a)
    return out


def main(args: argparse.Namespace, argv: list[str]) -> int:
    if args.scale:
        scale_mode(args, argv)
    if args.cluster:
        cluster_mode(args, argv)
    return 0


if __name__ == "__main__":  # the modes are options of embedding_filters.py
    import embedding_filters

    sys.exit(embedding_filters.main())
