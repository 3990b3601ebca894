"""Runs img2dataset in a process of its own: ``python -m poolsieve.pipeline.download.runner JOB.json``.

The download stage (``process.py``) writes a job file and starts this module as a subprocess, so that
img2dataset's spawn-based multiprocessing works whatever the caller is (CLI, pytest, a Ray worker) and
the watchdog has one process group to kill. The job names the input parquet files, the shard ids to
skip, the first shard id, the staging folder that img2dataset writes into, and img2dataset's settings.

Every worker process (multiprocessing or Ray) sets itself up before its first shard:

* the network guard is installed (``netguard.install_guard``) and urls are fetched with
  ``netguard.open_url`` (http and https only, checked before a proxy sees them): refused urls fail
  with a ``poolsieve-denied`` error and no connection is made;
* img2dataset's url fetch gets a total deadline over the whole request (connect, headers, each
  redirect hop, body: a slow server cannot hold a shard forever) and a size cap, keeping img2dataset's
  user agent and X-Robots-Tag handling;
* only JPEG, PNG, WebP, GIF and BMP images reach img2dataset's decoder (OpenCV), and only when their
  header declares at most ``max_image_area`` pixels (a sixth of it with transparency): decompression
  bombs and formats whose size cannot be read first (Radiance HDR, ...) are refused with a reason;
* under multiprocessing, a worker dies with its parent (``PR_SET_PDEATHSIG``), so a killed stage
  leaves no orphan still writing.
"""

from __future__ import annotations

import io
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from PIL import Image

from poolsieve.core.formats import MAX_IMAGE_BYTES
from poolsieve.core.processes import die_with_parent
from poolsieve.pipeline.download.netguard import install_guard, open_url

# albumentations (imported by img2dataset) checks PyPI for updates at import unless told not to: no
# traffic that the crawl did not ask for.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

_worker_ready = False
_limits: dict[str, Any] = {}


# ----------------------------------------------------------------------------- worker set-up
def setup_worker(guards: dict[str, Any]) -> None:
    """Install the deny list, the fetch limits and (multiprocessing) parent-death kill, once per process."""
    global _worker_ready
    if _worker_ready:
        return

    from img2dataset import downloader as i2d_downloader

    if guards.get("die_with_parent"):
        die_with_parent()
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused with a recorded reason instead
    install_guard(guards["deny_networks"], guards.get("allow_networks", []))
    _limits.update(fetch_deadline=float(guards["fetch_deadline"]), max_image_bytes=int(guards["max_image_bytes"]))
    i2d_downloader.download_image = fetch_image
    _worker_ready = True


def fetch_image(row: tuple[Any, str], timeout: float, user_agent_token: str | None,
                disallowed_header_directives: Any) -> tuple[Any, io.BytesIO | None, str | None]:
    """img2dataset's ``download_image`` with a total deadline and a byte cap; same return contract.

    The deadline bounds the whole fetch: connect, status line and headers, every redirect hop and the
    body (``fetch_clock``); ``timeout`` still bounds each connect and read within it."""
    from img2dataset.downloader import is_disallowed

    key, url = row
    deadline = _limits.get("fetch_deadline", 60.0)
    max_bytes = _limits.get("max_image_bytes", MAX_IMAGE_BYTES)
    user_agent = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"
    if user_agent_token:
        user_agent += f" (compatible; {user_agent_token}; +https://github.com/rom1504/img2dataset)"
    try:
        # not urlopen: the url is checked first (http/https, allowed address) and no file: handler exists
        with open_url(url, timeout=timeout, headers={"User-Agent": user_agent}, deadline=deadline) as r:
            if disallowed_header_directives and is_disallowed(r.headers, user_agent_token,
                                                              disallowed_header_directives):
                return key, None, "Use of image disallowed by X-Robots-Tag directive"
            declared = r.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                return key, None, f"response too large: {declared} bytes declared (limit {max_bytes})"
            buf = io.BytesIO()
            while True:
                chunk = r.read1(1 << 16)  # each read waits at most what is left of the deadline
                if not chunk:
                    break
                buf.write(chunk)
                if buf.tell() > max_bytes:
                    return key, None, f"response too large: over {max_bytes} bytes"
            buf.seek(0)
            return key, buf, None
    except Exception as err:  # noqa: BLE001 - img2dataset records any failure as the sample's error
        return key, None, str(err)


# The formats img2dataset's decoder (OpenCV) is given: PIL reads their size from the header, and
# their leading bytes make OpenCV pick the decoder of the same format. Anything else (Radiance HDR, PFM,
# EXR, JPEG 2000, TIFF, PNM, ... which OpenCV would decode in full before any size check) is refused.
DECODED_FORMATS = {"JPEG": (b"\xff\xd8\xff",), "MPO": (b"\xff\xd8\xff",), "PNG": (b"\x89PNG\r\n\x1a\n",),
                   "GIF": (b"GIF87a", b"GIF89a"), "BMP": (b"BM",), "WEBP": (b"RIFF",)}
_OPENCV_ONLY = ((b"#?RADIANCE", "Radiance HDR"), (b"#?RGBE", "Radiance HDR"), (b"PF", "PFM"), (b"Pf", "PFM"),
                (b"v/1\x01", "OpenEXR"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xffO\xffQ", "JPEG 2000"),
                (b"\x59\xa6\x6a\x95", "Sun raster"))
# Peak memory of img2dataset's resizer per image pixel (measured with OpenCV 4.14): up to 12 bytes for
# an opaque image (8-bit RGB 6, 16-bit RGB 12), 76 with transparency (it mattes in float64). So
# ``max_image_area`` opaque pixels and a sixth of that with transparency both fit in 12 B x max_image_area.
OPAQUE_BYTES_PER_PIXEL = 12
ALPHA_BYTES_PER_PIXEL = 76
_ACCEPTED = "only JPEG, PNG, WebP, GIF and BMP are decoded: their size is read before decoding"


def _has_alpha(im: Any, head: bytes) -> bool:
    if im.format == "BMP":
        return int.from_bytes(head[28:30], "little") == 32  # OpenCV keeps the fourth byte as alpha
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def refusal(img_stream: io.BytesIO, max_image_area: float) -> str | None:
    """Why the image must not be decoded (unknown format, too many pixels for its kind), or None."""
    img_stream.seek(0)
    head = img_stream.read(32)
    img_stream.seek(0)
    try:
        with Image.open(img_stream) as im:  # reads the header only
            w, h, fmt = *im.size, im.format
            alpha = _has_alpha(im, head)
    except Image.DecompressionBombError as e:
        return f"image area too large: {e}"
    except Exception:  # noqa: BLE001 - not an image PIL can read: refused undecoded
        name = next((n for magic, n in _OPENCV_ONLY if head.startswith(magic)), None)
        return f"image format refused: {name} ({_ACCEPTED})" if name else \
            f"Image decoding error: not a JPEG, PNG, WebP, GIF or BMP image ({_ACCEPTED})"
    if fmt not in DECODED_FORMATS or not head.startswith(DECODED_FORMATS[fmt]) \
            or (fmt == "WEBP" and head[8:12] != b"WEBP"):
        return f"image format refused: {fmt} ({_ACCEPTED})"
    if w * h > max_image_area:
        return f"image area too large: header declares {w}x{h} pixels"
    if alpha and w * h * ALPHA_BYTES_PER_PIXEL > max_image_area * OPAQUE_BYTES_PER_PIXEL:
        limit = int(max_image_area * OPAQUE_BYTES_PER_PIXEL / ALPHA_BYTES_PER_PIXEL)
        return (f"image area too large: header declares {w}x{h} pixels with transparency (limit {limit}: "
                "img2dataset mattes transparent images in float64)")
    return None


class BombCheckingResizer:
    """Wraps img2dataset's Resizer: only images that ``refusal`` lets through reach its decoder."""

    def __init__(self, resizer: Any, max_image_area: float):
        self.resizer = resizer
        self.max_image_area = max_image_area

    def __call__(self, img_stream: io.BytesIO, blurring_bbox_list: Any = None) -> tuple:
        why = refusal(img_stream, self.max_image_area)
        if why is not None:
            return None, None, None, None, None, why
        img_stream.seek(0)
        return self.resizer(img_stream, blurring_bbox_list)


class PoolsieveDownloader:
    """img2dataset's Downloader, with the worker set up before its first shard (picklable)."""

    def __init__(self, downloader: Any, guards: dict[str, Any]):
        self.downloader = downloader
        self.guards = guards

    def __call__(self, row: Any) -> Any:
        setup_worker(self.guards)
        return self.downloader(row)


# ----------------------------------------------------------------------------- the job
def build_downloader(job: dict[str, Any], column_list: list[str]) -> PoolsieveDownloader:
    from img2dataset.blurrer import BoundingBoxBlurrer
    from img2dataset.downloader import Downloader
    from img2dataset.resizer import Resizer
    from img2dataset.writer import WebDatasetSampleWriter

    s = job["img2dataset"]
    bbox_col = s.get("bbox_col")
    resizer = Resizer(
        image_size=s["image_size"], resize_mode=s["resize_mode"], resize_only_if_bigger=s["resize_only_if_bigger"],
        upscale_interpolation="lanczos", downscale_interpolation="area", encode_quality=s["encode_quality"],
        encode_format=s["encode_format"], skip_reencode=False, disable_all_reencoding=False,
        min_image_size=s["min_image_size"], max_image_area=s["max_image_area"],
        max_aspect_ratio=float("inf"), blurrer=BoundingBoxBlurrer() if bbox_col else None,
    )
    downloader = Downloader(
        sample_writer_class=WebDatasetSampleWriter, resizer=BombCheckingResizer(resizer, s["max_image_area"]),
        thread_count=s["thread_count"], save_caption=True, extract_exif=True, output_folder=job["staging"],
        column_list=column_list, timeout=s["timeout"], number_sample_per_shard=s["number_sample_per_shard"],
        oom_shard_count=s["oom_shard_count"], compute_hash="sha256", verify_hash_type=None,
        encode_format=s["encode_format"], retries=s["retries"], user_agent_token=s.get("user_agent_token"),
        disallowed_header_directives=s.get("disallowed_header_directives"), blurring_bbox_col=bbox_col,
    )
    guards = {"deny_networks": job["deny_networks"], "allow_networks": job.get("allow_networks", []),
              "fetch_deadline": job["fetch_deadline"],
              "max_image_bytes": job["max_image_bytes"],
              "die_with_parent": job["distributor"] == "multiprocessing"}
    return PoolsieveDownloader(downloader, guards)


def _download_one_shard(downloader: PoolsieveDownloader, row: Any) -> tuple[bool, Any, str]:
    import ray

    ok, row = downloader(row)
    return ok, row, ray.get_runtime_context().get_node_id()


def ray_distribute(downloader: PoolsieveDownloader, shards: Any, max_shard_retry: int,
                   max_in_flight: int | None = None) -> list[Any]:
    """img2dataset's shards as Ray tasks (one CPU each), a bounded number in flight; failed shards are
    retried ``max_shard_retry`` times (img2dataset's own Ray distributor drops them). Prints the node
    that made each shard. Returns the shards that still failed."""
    import ray

    task = ray.remote(num_cpus=1, max_retries=2)(_download_one_shard)
    downloader_ref = ray.put(downloader)
    limit = max_in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))

    def run(rows: Any) -> list[Any]:
        failed, pending = [], {}
        it = iter(rows)
        exhausted = False
        while pending or not exhausted:
            while not exhausted and len(pending) < limit:
                row = next(it, None)
                if row is None:
                    exhausted = True
                    break
                pending[task.remote(downloader_ref, row)] = row
            if not pending:
                break
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                row = pending.pop(ref)
                try:
                    ok, _, node = ray.get(ref)
                except ray.exceptions.RayError as e:  # the worker or its node died
                    ok, node = False, f"lost ({type(e).__name__})"
                print(f"poolsieve: shard {row[0]} {'done' if ok else 'failed'} on node {node}", flush=True)
                if not ok:
                    failed.append(row)
        return failed

    failed = run(shards)
    for _ in range(max_shard_retry):
        if not failed:
            break
        failed = run(failed)
    return failed


def run_job(job: dict[str, Any]) -> int:
    """Download the job's shards into its staging folder. Returns a process exit code."""
    from img2dataset.distributor import multiprocessing_distributor
    from img2dataset.reader import Reader

    s = job["img2dataset"]
    staging = Path(job["staging"])
    tmp = staging / "_tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    extra = ["uid"] + ([s["bbox_col"]] if s.get("bbox_col") else [])
    reader = Reader(job["inputs"][0], "parquet", "url", "text", None, None, extra,
                    s["number_sample_per_shard"], set(job["done_shards"]), str(tmp), job["start_shard_id"])
    reader.input_files = list(job["inputs"])  # exactly the stage's files, in the stage's order
    downloader = build_downloader(job, reader.column_list)
    if job["distributor"] == "multiprocessing":
        multiprocessing_distributor(s["processes_count"], downloader, reader, 1000, s["max_shard_retry"])
    elif job["distributor"] == "ray":
        import ray

        ray.init(address=job["ray_address"], ignore_reinit_error=True, log_to_driver=False,
                 configure_logging=False)
        try:
            ray_distribute(downloader, reader, s["max_shard_retry"])
        finally:
            ray.shutdown()
    else:
        raise ValueError(f"unknown distributor {job['distributor']!r}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m poolsieve.pipeline.download.runner JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text())
    parent = job.get("parent_pid")
    if parent:
        die_with_parent()
        if os.getppid() != parent:  # the stage died before we could ask to follow it
            return 3
    return run_job(job)


if __name__ == "__main__":
    # Import by package name so that pickled objects name ``poolsieve.pipeline.download.runner``,
    # which spawn children and Ray workers can import (``__main__`` they could not).
    from poolsieve.pipeline.download import runner as _runner

    sys.exit(_runner.main(sys.argv[1:]))
