"""The download stage's options (the ``download:`` section and its flags), apart from the stage so that
the modules doing the work can name them."""

from __future__ import annotations

from dataclasses import dataclass

from poolsieve.core.errors import ConfigError
from poolsieve.core.formats import MAX_IMAGE_BYTES
from poolsieve.core.stage import option
from poolsieve.pipeline.download.hub_metadata import SCALES
from poolsieve.pipeline.download.netguard import NetworkPolicy

SCALE_NAMES = tuple(SCALES)
RESIZE_MODES = ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop")
DISTRIBUTORS = ("auto", "multiprocessing", "ray")
ENCODE_FORMATS = ("jpg", "png", "webp")


@dataclass
class DownloadConfig:
    """The ``download:`` section; each option is also a flag. Defaults follow DataComp's ``download_upstream.py``;
    img2dataset's and DataComp's own flag spellings (``--processes_count``, ``--download_npz``, ...) work too."""

    metadata_source: str | None = option(
        None, "a local folder of metadata parquets (and .npz) to copy into metadata/ (DataComp's --metadata_dir "
        "when it already holds them)", metavar="DIR",
        aliases=("--metadata_dir",))
    scale: str | None = option(None, "fetch DataComp's metadata for this scale from the Hugging Face hub first",
                               choices=SCALE_NAMES)
    download_npz: bool = option(False, "with --scale: also fetch the .npz embeddings", aliases=("--download_npz",))
    hub_endpoint: str | None = option(None, "a Hugging Face hub mirror (default: HF_ENDPOINT or huggingface.co)",
                                      metavar="URL")
    skip_shards: bool = option(False, "fetch the metadata only", aliases=("--skip_shards",))
    image_size: int = option(512, "resize the images' longest side to this", aliases=("--image_size",))
    resize_mode: str = option("keep_ratio_largest", "img2dataset resize mode", choices=RESIZE_MODES,
                              aliases=("--resize_mode",))
    resize_only_if_bigger: bool = option(True, "never upscale small images (on, as in DataComp)",
                                         aliases=("--resize_only_if_bigger",))
    encode_format: str = option("jpg", "image format in the shards", choices=ENCODE_FORMATS,
                                aliases=("--encode_format",))
    encode_quality: int = option(95, "JPEG/WebP quality of the stored images", aliases=("--encode_quality",))
    samples_per_shard: int = option(10_000, "samples per shard", aliases=("--number_sample_per_shard",))
    processes: int | None = option(None, "download processes (default: all CPUs)", aliases=("--processes_count",))
    threads: int = option(32, "fetch threads per process; up to 2 x threads fetched images of at most "
                          "max_image_bytes wait per process (2 GiB with the defaults)", aliases=("--thread_count",))
    retries: int = option(2, "retries per url inside img2dataset")
    timeout: float = option(10.0, "seconds per connect / read")
    fetch_deadline: float = option(60.0, "seconds one fetch of an image may take in all: connect, headers, every "
                                   "redirect hop and body (slow servers end here; each retry has its own)")
    max_image_bytes: int = option(MAX_IMAGE_BYTES, "bytes one image may have; larger ones are refused (score never "
                                  "reads an image member over the default either)", metavar="BYTES")
    max_image_area: float = option(
        64 << 20, "refuse images whose header declares more pixels, before decoding (8192^2; with transparency a "
        "sixth). Each process decodes one image at a time, in at most ~12 bytes x this: peak decode memory "
        "<= processes x 12 B x max_image_area", metavar="PIXELS", aliases=("--max_image_area",))
    min_image_size: int = option(0, "refuse images whose shorter side is smaller than this",
                                 aliases=("--min_image_size",))
    blur_faces: bool = option(True, "blur face_bboxes when the metadata has them (--no-blur-faces: keep them)")
    deny_networks: list[str] = option(
        [], "never fetch from this network (repeatable; adds to the default: every non-global address)",
        flag="--deny-network", metavar="CIDR")
    allow_networks: list[str] = option(
        [], "fetch from this otherwise denied network, e.g. 127.0.0.1/32 for a local server (repeatable)",
        flag="--allow-network", metavar="CIDR")
    distributor: str = option("auto", "auto: ray with --ray-address, else img2dataset's multiprocessing",
                              choices=DISTRIBUTORS)
    watchdog_seconds: float = option(1800.0, "stop the workers when no shard finished for this long")
    max_shard_retry: int = option(1, "img2dataset's re-runs of a shard that failed as a whole",
                                  aliases=("--max_shard_retry",))
    retry_failed: bool = option(False, "re-fetch only the failed samples into new shards, made with the settings "
                                "the pool's shards were made with (samples per shard, image size, format)")
    user_agent_token: str | None = option(None, "added to img2dataset's user agent", aliases=("--user_agent_token",))
    min_success_rate: float = option(
        0.1, "fail (exit 2) when fewer than this fraction of the samples were fetched (a dead server, a pool "
        "the network guard refuses)", metavar="RATE")
    drop_duplicate_uids: bool = option(False, "drop metadata rows whose uid repeats an earlier row "
                                       "(default: refuse the file)")

    def validate(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"download.resize_mode: {self.resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
        if self.distributor not in DISTRIBUTORS:
            raise ConfigError(f"download.distributor: {self.distributor!r} is not one of {', '.join(DISTRIBUTORS)}")
        for name in ("image_size", "samples_per_shard", "threads", "timeout", "fetch_deadline", "watchdog_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"download.{name} must be positive, got {getattr(self, name)!r}")
        if self.processes is not None and self.processes <= 0:
            raise ConfigError(f"download.processes must be positive, got {self.processes!r}")
        if not 0 <= self.min_success_rate <= 1:
            raise ConfigError(f"download.min_success_rate must be between 0 and 1, got {self.min_success_rate!r}")
        if self.max_image_area <= 0 or self.max_image_bytes <= 0:
            raise ConfigError("download.max_image_area and download.max_image_bytes must be positive")
        for key in ("deny_networks", "allow_networks"):
            if not isinstance(getattr(self, key), list):
                raise ConfigError(f"download.{key} must be a list of networks (CIDR strings)")
        NetworkPolicy(self.deny_networks, self.allow_networks)  # a bad CIDR stops here, in one line
