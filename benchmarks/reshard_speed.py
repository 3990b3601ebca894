"""Reshard speed, side by side in one run: poolsieve vs a plain sequential copy (the ceiling) vs DataComp.

Generates an img2dataset-layout pool of ``--pool-gb`` (random-byte "jpg" members of varying size,
a caption and a json per sample), a subset of ``--fraction`` of its uids, then times, on the same
input and subset:

* ``ceiling``: read every pool tar sequentially (8 MiB blocks) and write as many bytes as the
  reshard writes: a plain read+write of the same bytes;
* ``poolsieve``: ``reshard()`` on a local Ray with ``--num-cpus`` workers (Ray and its workers
  started by one untimed run beforehand, as on a running cluster);
* ``datacomp``: mlfoundations/datacomp ``resharder.py`` with ``-j --num-cpus`` (found with
  ``--datacomp-resharder`` / ``$DATACOMP_RESHARDER`` and run by ``--datacomp-python`` /
  ``$DATACOMP_PYTHON``; it needs webdataset 0.2.31, so give it its own venv). Its wall time
  includes interpreter start-up; its own "processed ... in X s" figure (workers only) is shown too
  and the ratio uses the faster of the two.

Every poolsieve run's output files are checked byte for byte: against ``--digests FILE`` when it exists
(written by another revision of poolsieve: this script uses only the stage's API, so it runs on any),
else against the first run's, which it writes to FILE.

MB/s is pool bytes / seconds for every column; each row shows the load average at its runs' starts.
Three modes: ``cached`` (page cache warm, no flush: CPU and memory bound), ``synced`` (each timing ends with ``sync``: written bytes reach the disk) and
``cold`` (before each timing the pool is evicted from the page cache: ``sync`` then
``POSIX_FADV_DONTNEED`` on every pool file, checked with ``mincore``). ``cold`` times poolsieve on Ray
and in-process (``--executor local``), DataComp, and ``cat`` of the pool tars into one file (the
ceiling: the same bytes read once, sequentially), and prints poolsieve's speed as a fraction of
``cat``'s and as a multiple of DataComp's.

``--variants readers,writers`` times the tar libraries against poolsieve's own code on the same
shards: pass 1's read (every header plus each ``.json``, cold) by tar_io's block reader, by a
``pread`` per header (the reader it replaced), by ``tarfile`` (seeking through a 16 MiB buffer, and
streaming) and by webdataset's ``tar_file_iterator``; pass 2's write of the same output shards by
reshard's writer (kernel copies of large members), by ``tarfile.addfile`` and by ``webdataset.TarWriter``
(members checked equal). This is the measurement behind keeping the hand-written reader and writer.

The pool is deleted afterwards unless ``--keep``.

    python benchmarks/reshard_speed.py --datacomp-resharder /work/datacomp-src/resharder.py \\
        --datacomp-python /work/dcvenv/bin/python
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from poolsieve.core.formats import write_subset
from poolsieve.core.runtime import Runtime
from poolsieve.core.tar_io import BLOCK, END_OF_ARCHIVE, padding, read_tar, ustar_header
from poolsieve.core.uids import uids_to_pairs
from poolsieve.core.workspace import Workspace
from poolsieve.pipeline.reshard.stage import ReshardConfig, reshard  # the stage's API only: any revision runs

BLOCK_READ = 8 << 20


def generate_pool(ws: Workspace, pool_bytes: int, per_shard: int, image_kb: int, seed: int) -> list[str]:
    """Write img2dataset-layout shards totalling about ``pool_bytes``; return the uids in pool order."""
    marker = ws.root / "bench_pool.json"
    spec = {"pool_bytes": pool_bytes, "per_shard": per_shard, "image_kb": image_kb, "seed": seed}
    if marker.exists() and json.loads(marker.read_text())["spec"] == spec:
        return json.loads(marker.read_text())["uids"]
    shutil.rmtree(ws.shards_dir, ignore_errors=True)
    ws.shards_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    uids: list[str] = []
    total, shard = 0, 0
    while total < pool_bytes:
        name = f"{shard:05d}"
        with open(ws.shards_dir / f"{name}.tar", "wb") as f:
            for i in range(per_shard):
                key, uid = f"{name}{i:04d}", rng.bytes(16).hex()
                jpg = rng.bytes(int(image_kb * 1024 * rng.uniform(0.5, 1.5)))
                txt = f"a photo of sample {key}".encode()
                meta = json.dumps({"uid": uid, "caption": txt.decode(), "key": key, "status": "success",
                                   "url": f"http://example.invalid/{uid}.jpg"}).encode()
                for ext, data in (("jpg", jpg), ("txt", txt), ("json", meta)):
                    f.write(ustar_header(f"{key}.{ext}", len(data)) + data + padding(len(data)))
                uids.append(uid)
            f.write(END_OF_ARCHIVE)
            total += f.tell()
        (ws.shards_dir / f"{name}_stats.json").write_text(json.dumps({"count": per_shard, "successes": per_shard}))
        shard += 1
    marker.write_text(json.dumps({"spec": spec, "uids": uids}))
    return uids


def pool_tars(ws: Workspace) -> list[Path]:
    return ws.shard_tars()


def read_all(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(BLOCK_READ):
                pass


def sequential_copy(paths: list[Path], out_path: Path, write_bytes: int) -> None:
    """The ceiling: read every input byte in order, write ``write_bytes`` of them."""
    left = write_bytes
    with open(out_path, "wb", buffering=0) as out:
        for p in paths:
            with open(p, "rb", buffering=0) as f:
                while block := f.read(BLOCK_READ):
                    if left > 0:
                        out.write(block[:left])
                        left -= len(block)


def timed(fn, synced: bool) -> tuple[float, Any]:
    """Seconds ``fn()`` takes (then ``sync`` when ``synced``) and what it returned."""
    start = time.perf_counter()
    result = fn()
    if synced:
        os.sync()
    return time.perf_counter() - start, result


# ------------------------------------------------------------------------------ cold page cache
def evict(paths: list[Path]) -> None:
    """Drop ``paths`` from the page cache: flush dirty pages, then ``POSIX_FADV_DONTNEED`` each file."""
    os.sync()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_fraction(paths: list[Path]) -> float:
    """Fraction of the files' pages in the page cache (``mincore`` on a read-only mapping of each)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    page = os.sysconf("SC_PAGE_SIZE")
    resident = total = 0
    for p in paths:
        size = p.stat().st_size
        if size == 0:
            continue
        pages = -(-size // page)
        fd = os.open(p, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
            if addr in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), f"mmap {p}")
            vec = ctypes.create_string_buffer(pages)
            try:
                if libc.mincore(addr, size, vec) != 0:
                    raise OSError(ctypes.get_errno(), f"mincore {p}")
            finally:
                libc.munmap(addr, size)
        finally:
            os.close(fd)
        resident += sum(b & 1 for b in vec.raw)
        total += pages
    return resident / max(total, 1)


def cat_into_file(paths: list[Path], out_path: Path) -> None:
    """``cat POOL_TARS > out_path``: the cold ceiling (every pool byte read once, in order)."""
    with open(out_path, "wb") as out:
        subprocess.run(["cat", *map(str, paths)], stdout=out, check=True)


# ------------------------------------------------------------------------ tar library variants
def scan_blocks(path: Path) -> int:
    """tar_io's block reader (what reshard's pass 1 uses): headers and .json parsed from 16 MiB reads."""
    return len(read_tar(path, capture=lambda name: name.endswith(".json"))[1])


def scan_pread(path: Path) -> int:
    """The reader the block reader replaced: a ``pread`` per header, a ``pread`` per .json (no checks)."""
    found, offset, size = 0, 0, path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        while offset + BLOCK <= size:
            header = os.pread(fd, BLOCK, offset)
            if header == b"\0" * BLOCK:
                break
            n = int(header[124:135], 8)
            if header[:100].split(b"\0", 1)[0].endswith(b".json"):
                json.loads(os.pread(fd, n, offset + BLOCK))
                found += 1
            offset += BLOCK + -(-n // BLOCK) * BLOCK
    finally:
        os.close(fd)
    return found


def scan_tarfile(path: Path, stream: bool = False) -> int:
    """``tarfile`` in random-access mode over a 16 MiB buffered file (it seeks past member data), or in
    stream mode (``r|``, its default buffer: every byte passes through Python)."""
    found = 0
    buffering = 0 if stream else 16 << 20
    with open(path, "rb", buffering=buffering) as f, tarfile.open(fileobj=f, mode="r|" if stream else "r:") as tf:
        for m in tf:
            if m.isreg() and m.name.endswith(".json"):
                json.loads(tf.extractfile(m).read())
                found += 1
    return found


def scan_webdataset(path: Path) -> int:
    """webdataset's ``tar_file_iterator`` (DataComp's reader): reads every member's data."""
    from webdataset.tariterators import tar_file_iterator

    found = 0
    with open(path, "rb", buffering=16 << 20) as f:
        for item in tar_file_iterator(f):
            if item["fname"].endswith(".json"):
                json.loads(item["data"])
                found += 1
    return found


SCANNERS: dict[str, Callable[[Path], int]] = {
    "tar_io blocks": scan_blocks, "pread per header": scan_pread, "tarfile r: 16MiB": scan_tarfile,
    "tarfile r| stream": lambda p: scan_tarfile(p, stream=True), "webdataset": scan_webdataset}


def _unit_members(unit: Any) -> list[tuple[str, bytes]]:
    """The (name, bytes) pairs an output shard holds, read from the pool tars."""
    from poolsieve.pipeline.reshard.write import member_names

    names = member_names(unit)
    source_of_member = np.repeat(unit.source, unit.member_count).tolist()
    out = []
    for name, s, offset, size in zip(names, source_of_member, unit.member_offset.tolist(),
                                     unit.member_size.tolist(), strict=True):
        with open(unit.sources[s], "rb") as f:
            f.seek(offset)
            out.append((name, f.read(size)))
    return out


def write_tarfile(unit: Any) -> None:
    """An output shard written with ``tarfile.addfile`` (deterministic ustar headers)."""
    with tarfile.open(unit.tar_path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in _unit_members(unit):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            tf.addfile(info, io.BytesIO(data))


def write_webdataset(unit: Any) -> None:
    """An output shard written with ``webdataset.TarWriter`` (DataComp's writer)."""
    import webdataset as wds

    with wds.TarWriter(unit.tar_path, mtime=0, encoder=False) as sink:
        sample: dict = {}
        for name, data in _unit_members(unit):
            key, ext = name.split(".", 1)
            if sample and sample["__key__"] != key:
                sink.write(sample)
                sample = {}
            sample["__key__"] = key
            sample[ext] = data
        if sample:
            sink.write(sample)


def write_poolsieve(unit: Any) -> None:
    """An output shard written by reshard's pass 2 (kernel copies of large members, one writev per sample)."""
    from poolsieve.pipeline.reshard.write import write_shard

    write_shard(unit)


WRITERS: dict[str, Callable[[Any], Any]] = {
    "tar_io (reshard)": write_poolsieve, "tarfile addfile": write_tarfile, "webdataset TarWriter": write_webdataset}


def tar_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]


def run_variants(which: set[str], ws: Workspace, tars: list[Path], shards: int, repeats: int) -> None:
    """Time each tar library against tar_io on the same shards (reads cold, writes warm); median of repeats."""
    import webdataset  # noqa: F401 - imported before the clocks start

    tars = tars[:shards]
    nbytes = sum(t.stat().st_size for t in tars)
    if "readers" in which:
        print(f"\n== readers, cold: pass 1 over {len(tars)} pool tars ({nbytes / 1e9:.2f} GB), median of {repeats}")
        found: dict[str, int] = {}
        times: dict[str, list[float]] = {k: [] for k in SCANNERS}
        for _ in range(repeats):
            for name, scan in SCANNERS.items():
                evict(tars)
                start = time.perf_counter()
                found[name] = sum(scan(t) for t in tars)
                times[name].append(time.perf_counter() - start)
        base = statistics.median(times["tar_io blocks"])
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"  {name:<20} {med:7.2f} s  {nbytes / 1e6 / med:7.0f} MB/s  {base / med:5.2f} x tar_io  "
                  f"({found[name]} .json; load {os.getloadavg()[0]:.1f})")
        if len(set(found.values())) != 1:
            raise SystemExit(f"readers disagree on the .json count: {found}")
    if "writers" in which:
        from poolsieve.pipeline.reshard.plan import OutputPlanner
        from poolsieve.pipeline.reshard.scan import ScanUnit, scan_shard

        out_dir = ws.root / "variants"
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir()
        from poolsieve.core.formats import read_subset
        from poolsieve.core.uids import pairs_to_keys

        subset = read_subset(ws.subset_path("bench"))
        np.save(out_dir / "keys.npy", pairs_to_keys(subset))
        planner = OutputPlanner(out_dir, [str(t) for t in tars], 10000, subset_rows=len(subset))
        units = [u for t in tars for u in planner.add(scan_shard(ScanUnit(str(t), str(out_dir / "keys.npy"))))]
        units += planner.finish()
        out_bytes = 0
        times = {k: [] for k in WRITERS}
        members: dict[str, list] = {}
        for _ in range(repeats):
            for name, write in WRITERS.items():
                read_all(tars)  # warm input: the write is what is timed
                start = time.perf_counter()
                for unit in units:
                    write(unit)
                times[name].append(time.perf_counter() - start)
                members[name] = sorted(tar_members(Path(units[0].tar_path)))
                out_bytes = sum(Path(u.tar_path).stat().st_size for u in units)
        print(f"\n== writers, warm input: pass 2 writing {len(units)} output shards (~{out_bytes / 1e9:.2f} GB), "
              f"median of {repeats}")
        base = statistics.median(times["tar_io (reshard)"])
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"  {name:<20} {med:7.2f} s  {base / med:5.2f} x tar_io  (load {os.getloadavg()[0]:.1f})")
        if any(m != members["tar_io (reshard)"] for m in members.values()):
            raise SystemExit("writers disagree on the members of the first output shard")
        shutil.rmtree(out_dir, ignore_errors=True)


def run_datacomp(args: argparse.Namespace, ws: Workspace, out_dir: Path) -> tuple[int, float | None]:
    """Run DataComp's resharder; return (samples written, its own workers-only seconds)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    cmd = [args.datacomp_python, args.datacomp_resharder, "-i", str(ws.shards_dir), "-o", str(out_dir),
           "-s", str(ws.subset_path("bench")), "--shard-format", "{:05d}.tar",
           "--shard-stats-format", "{:05d}_stats.json", "-j", str(args.num_cpus),
           "--shard-size", str(args.shard_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(args.datacomp_resharder).parent,
                          env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"DataComp resharder failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    own = re.search(r"processed \d+ images in ([0-9.]+)s", proc.stderr)
    meta = json.loads((out_dir / "meta.json").read_text())
    return int(meta["output_count"]), float(own.group(1)) if own else None


def output_digests(out_dir: Path) -> dict[str, str]:
    """sha256 of every output shard and stats file (what must stay byte-identical between revisions)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out_dir.iterdir())
            if p.name.endswith((".tar", "_stats.json"))}


class OutputCheck:
    """Every poolsieve run's output against the expected one: ``--digests FILE`` when it exists (made by
    another revision), else the first run's, which is then written to FILE."""

    def __init__(self, path: Path | None):
        self.path = path
        self.expected = json.loads(path.read_text()) if path is not None and path.exists() else None

    def check(self, out_dir: Path, what: str) -> None:
        got = output_digests(out_dir)
        if self.expected is None:
            self.expected = got
            if self.path is not None:
                self.path.write_text(json.dumps(got, indent=1) + "\n")
                print(f"output digests of {len(got)} files written to {self.path}")
            return
        if got != self.expected:
            differ = sorted(k for k in set(got) | set(self.expected) if got.get(k) != self.expected.get(k))
            raise SystemExit(f"{what}: output differs from the expected bytes in {len(differ)} files "
                             f"(e.g. {differ[:3]})")


def run_mode(mode: str, args: argparse.Namespace, ws: Workspace, tars: list[Path], pool_bytes: int,
             cfg: ReshardConfig, runtime: Runtime, local: Runtime, scratch: Path, have_dc: bool,
             check: OutputCheck) -> None:
    """Time every method ``args.repeats`` times in one mode, interleaved, and print medians and ratios."""
    cold, synced = mode == "cold", mode == "synced"
    ceiling = "cat > file" if cold else "ceiling"
    times: dict[str, list[float]] = {ceiling: [], "poolsieve ray": []}
    if cold:
        times["poolsieve local"] = []
    if have_dc:
        times.update({"datacomp": [], "datacomp workers": []})
    resident: list[float] = []
    loads: dict[str, list[float]] = {}
    out_bytes = 0

    def prepare(name: str) -> None:
        shutil.rmtree(ws.filtered_dir("bench"), ignore_errors=True)
        scratch.unlink(missing_ok=True)
        if cold:
            evict(tars)
            resident.append(resident_fraction(tars))
        else:
            read_all(tars)  # same warm page cache for everyone
        loads.setdefault(name, []).append(os.getloadavg()[0])

    for _ in range(args.repeats):
        for name, rt in (("poolsieve ray", runtime), ("poolsieve local", local)):
            if name in times:
                prepare(name)
                seconds, summary = timed(lambda r=rt: reshard(ws, cfg, r, overwrite=True), synced)
                times[name].append(seconds)
                out_bytes = summary["bytes_written"]
                check.check(ws.filtered_dir("bench"), f"{mode} {name}")
        prepare(ceiling)
        if cold:
            times[ceiling].append(timed(lambda: cat_into_file(tars, scratch), synced)[0])
        else:
            times[ceiling].append(timed(lambda b=out_bytes: sequential_copy(tars, scratch, b), synced)[0])
        scratch.unlink(missing_ok=True)
        if have_dc:
            prepare("datacomp")
            seconds, (count, own) = timed(lambda: run_datacomp(args, ws, ws.root / "datacomp"), synced)
            times["datacomp"].append(seconds)
            if own is not None:
                times["datacomp workers"].append(own)
            if count != summary["output_count"]:
                raise SystemExit(f"outputs differ: DataComp wrote {count} samples, poolsieve {summary['output_count']}")
    loads["datacomp workers"] = loads.get("datacomp", [])
    med = {k: statistics.median(v) for k, v in times.items() if v}
    rate = {k: pool_bytes / 1e6 / s for k, s in med.items()}
    print(f"\n== {mode}: {pool_bytes / 1e9:.2f} GB pool, {out_bytes / 1e9:.2f} GB written, median of "
          f"{args.repeats}" + (f"; pool resident after eviction {max(resident):.1%}" if cold else ""))
    for k, s in med.items():
        spread = f"runs {min(times[k]):.2f}..{max(times[k]):.2f} s"
        load = f"load {min(loads[k]):.1f}..{max(loads[k]):.1f}"
        print(f"  {k:<17} {s:7.2f} s  {rate[k]:8.0f} MB/s  {rate[k] / rate[ceiling]:5.2f} x {ceiling}  ({spread}; {load})")
    dc_best = max((rate[k] for k in ("datacomp", "datacomp workers") if k in rate), default=None)
    for k in ("poolsieve ray", "poolsieve local"):
        if k in rate:
            print(f"  {k} / {ceiling} = {rate[k] / rate[ceiling]:.2f} (target >= 0.8)"
                  + (f"; / datacomp = {rate[k] / dc_best:.2f} (target > 1)" if dc_best else ""))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pool-dir", type=Path, default=Path("/tmp/poolsieve-reshard-bench"))
    p.add_argument("--pool-gb", type=float, default=2.2, help="pool size in GB (issue 7 asks for at least 2)")
    p.add_argument("--samples-per-shard", type=int, default=5000)
    p.add_argument("--image-kb", type=int, default=40, help="mean image size in KiB (0.5x to 1.5x)")
    p.add_argument("--fraction", type=float, default=1.0, help="fraction of the pool's uids in the subset")
    p.add_argument("--shard-size", type=int, default=10000)
    p.add_argument("--num-cpus", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=3, help="timings per method and mode (median is shown)")
    p.add_argument("--modes", default="cached,synced,cold", help="comma list of cached, synced, cold")
    p.add_argument("--variants", default="", help="comma list of readers, writers: tar libraries vs tar_io")
    p.add_argument("--variant-shards", type=int, default=4, help="pool tars the variants run over")
    p.add_argument("--datacomp-resharder", default=os.environ.get("DATACOMP_RESHARDER"))
    p.add_argument("--datacomp-python", default=os.environ.get("DATACOMP_PYTHON", sys.executable))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep the generated pool")
    p.add_argument("--digests", type=Path, help="sha256 of every output file: compared with this file when it "
                                                "exists (written by another revision), else written to it")
    args = p.parse_args()

    ws = Workspace.create(args.pool_dir)
    t0 = time.perf_counter()
    uids = generate_pool(ws, int(args.pool_gb * 1e9), args.samples_per_shard, args.image_kb, args.seed)
    tars = pool_tars(ws)
    pool_bytes = sum(t.stat().st_size for t in tars)
    rng = np.random.default_rng(args.seed + 1)
    chosen = [uids[i] for i in np.flatnonzero(rng.random(len(uids)) < args.fraction)]
    write_subset(ws.subset_path("bench"), uids_to_pairs(chosen))
    os.sync()
    print(f"pool: {len(tars)} shards, {len(uids)} samples, {pool_bytes / 1e9:.2f} GB at {ws.root} "
          f"(ready in {time.perf_counter() - t0:.0f} s); subset: {len(chosen)} uids ({args.fraction:.0%}); "
          f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}")
    have_dc = bool(args.datacomp_resharder) and Path(args.datacomp_resharder).is_file()
    if not have_dc:
        print("datacomp: skipped (pass --datacomp-resharder PATH/resharder.py and --datacomp-python PYTHON, "
              "or set DATACOMP_RESHARDER / DATACOMP_PYTHON)")

    runtime = Runtime(executor="ray", num_cpus=args.num_cpus)
    local = Runtime(executor="local")
    cfg = ReshardConfig(subset="bench", shard_size=args.shard_size)
    scratch = ws.root / "ceiling.bin"
    try:
        variants = {v.strip() for v in args.variants.split(",") if v.strip()}
        if variants:
            run_variants(variants, ws, tars, args.variant_shards, args.repeats)
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        check = OutputCheck(args.digests)
        if modes:
            runtime.ensure_ray()
            reshard(ws, cfg, runtime, overwrite=True)  # untimed: Ray's workers start, as on a running cluster
            check.check(ws.filtered_dir("bench"), "first run")
        for mode in modes:
            run_mode(mode, args, ws, tars, pool_bytes, cfg, runtime, local, scratch, have_dc, check)
    finally:
        runtime.shutdown()
        if not args.keep:
            shutil.rmtree(ws.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
