"""The task registry: DataComp's 38 evaluation tasks plus poolsieve's synthetic held-out tasks.

Keys, names, sizes, class counts, main metrics and chance scores follow DataComp's ``tasklist.yml``
(40 entries: 38 scored, plus FairFace and UTKFace, whose fairness metrics are reported but have no main
metric); groups follow its ``aggregate_scores.py`` (ImageNet, ImageNet dist. shifts, VTAB, Retrieval;
every scored task counts in the overall average). Where the data is, as DataComp's
``download_evalsets.py`` fetches it: classification, WILDS and fairness sets are the webdatasets
``djghosh/wds_<key>_test`` (``fairness/`` dropped, ``/`` as ``-``; clip_benchmark's ``wds/`` format);
Flickr, MSCOCO and WinoGAViL are the Hugging Face datasets ``nlphuji/<name>`` (``source == "hf"``).
"""

from __future__ import annotations

from dataclasses import dataclass

from poolsieve.core.errors import ConfigError

CLASSIFICATION = "zeroshot_classification"
RETRIEVAL = "zeroshot_retrieval"
WILDS = "wilds"
FAIRNESS = "fairness"
WINOGAVIL = "winogavil"
SYNTHETIC = "synthetic"
TASK_TYPES = (CLASSIFICATION, RETRIEVAL, WILDS, FAIRNESS, WINOGAVIL, SYNTHETIC)
HF_USER = "nlphuji"

IMAGENET = "ImageNet"
DIST_SHIFTS = "ImageNet dist. shifts"
VTAB = "VTAB"
RETRIEVAL_GROUP = "Retrieval"
SYNTHETIC_GROUP = "Synthetic"
GROUPS = (IMAGENET, DIST_SHIFTS, VTAB, RETRIEVAL_GROUP, SYNTHETIC_GROUP)

HUB_USER = "djghosh"


@dataclass(frozen=True)
class Task:
    """One evaluation task. ``group`` is None for tasks that only count in the overall average;
    ``main_metric`` is None for tasks that are reported only (FairFace, UTKFace). ``folder`` is set for a
    user's own task (a clip_benchmark webdataset folder)."""

    key: str
    name: str
    task_type: str
    main_metric: str | None
    size: int
    num_classes: int | None = None
    random_score: float | None = None
    group: str | None = None
    tags: tuple[str, ...] = ()
    folder: str | None = None

    @property
    def datacomp(self) -> bool:
        return self.key in DATACOMP_KEYS

    @property
    def source(self) -> str:
        """``hf`` for the Hugging Face datasets DataComp reads with ``datasets``; else ``wds``."""
        return "hf" if self.key.startswith(("retrieval/", "misc/")) else "wds"

    @property
    def short_key(self) -> str:
        """The key as DataComp's loaders use it: ``fairness/`` dropped (``fairness/geode`` -> ``geode``)."""
        return self.key.removeprefix("fairness/")

    @property
    def wds_name(self) -> str:
        """Folder / hub repo name of the test webdataset, e.g. ``wds_vtab-cifar100_test``."""
        return f"wds_{self.short_key.replace('/', '-')}_test"

    @property
    def hub_repo(self) -> str:
        return f"{HUB_USER}/{self.wds_name}"

    @property
    def hf_dataset(self) -> str:
        """The Hugging Face dataset of a retrieval / WinoGAViL task, e.g. ``nlphuji/winogavil``."""
        return f"{HF_USER}/{self.key.split('/', 1)[1]}"

    @property
    def clip_benchmark_name(self) -> str:
        """clip_benchmark's dataset name for the webdataset copy, e.g. ``wds/vtab/cifar100``."""
        return f"wds/{self.short_key}"


def _c(key: str, name: str, size: int, classes: int, chance: float, group: str | None = None,
       metric: str = "acc1", tags: tuple[str, ...] = ()) -> Task:
    return Task(key, name, CLASSIFICATION, metric, size, classes, chance, group, tags)


MPCR = "mean_per_class_recall"
DATACOMP_TASKS: tuple[Task, ...] = (
    _c("vtab/caltech101", "Caltech-101", 6085, 102, 0.009804, VTAB, MPCR, ("vtab_natural",)),
    _c("cifar10", "CIFAR-10", 10000, 10, 0.1),
    _c("vtab/cifar100", "CIFAR-100", 10000, 100, 0.01, VTAB, tags=("vtab_natural",)),
    _c("vtab/clevr_count_all", "CLEVR Counts", 15000, 8, 0.125061, VTAB, tags=("vtab_structured",)),
    _c("vtab/clevr_closest_object_distance", "CLEVR Distance", 15000, 6, 0.19052, VTAB, tags=("vtab_structured",)),
    _c("country211", "Country211", 21100, 211, 0.004739),
    _c("vtab/dtd", "Describable Textures", 1880, 47, 0.021277, VTAB, tags=("vtab_natural",)),
    _c("vtab/eurosat", "EuroSAT", 5400, 10, 0.101483, VTAB, tags=("vtab_specialized",)),
    _c("fgvc_aircraft", "FGVC Aircraft", 3333, 100, 0.01, metric=MPCR),
    _c("food101", "Food-101", 25250, 101, 0.009901),
    _c("gtsrb", "GTSRB", 12630, 43, 0.037604),
    _c("imagenet1k", "ImageNet 1k", 50000, 1000, 0.001, IMAGENET),
    _c("imagenet_sketch", "ImageNet Sketch", 50889, 1000, 0.001, DIST_SHIFTS),
    _c("imagenetv2", "ImageNet v2", 10000, 1000, 0.001, DIST_SHIFTS),
    _c("imagenet-a", "ImageNet-A", 7500, 200, 0.008056, DIST_SHIFTS),
    _c("imagenet-o", "ImageNet-O", 2000, 200, 0.006047, DIST_SHIFTS),
    _c("imagenet-r", "ImageNet-R", 30000, 200, 0.006163, DIST_SHIFTS),
    _c("vtab/kitti_closest_vehicle_distance", "KITTI Vehicle Distance", 711, 4, 0.295289, VTAB,
       tags=("vtab_structured",)),
    _c("mnist", "MNIST", 10000, 10, 0.10035),
    _c("objectnet", "ObjectNet", 18574, 113, 0.009481, DIST_SHIFTS),
    _c("vtab/flowers", "Oxford Flowers-102", 6149, 102, 0.009804, VTAB, MPCR, ("vtab_natural",)),
    _c("vtab/pets", "Oxford-IIIT Pet", 3669, 37, 0.027027, VTAB, MPCR, ("vtab_natural",)),
    _c("voc2007", "Pascal VOC 2007", 14976, 20, 0.154038),
    _c("vtab/pcam", "PatchCamelyon", 32768, 2, 0.5, VTAB, tags=("vtab_specialized",)),
    _c("renderedsst2", "Rendered SST2", 1821, 2, 0.500001),
    _c("vtab/resisc45", "RESISC45", 6300, 45, 0.022342, VTAB, tags=("vtab_specialized",)),
    _c("cars", "Stanford Cars", 8041, 196, 0.00516),
    _c("stl10", "STL-10", 8000, 10, 0.1),
    _c("sun397", "SUN397", 108754, 397, 0.004645, VTAB, tags=("vtab_natural",)),
    _c("vtab/svhn", "SVHN", 26032, 10, 0.117897, VTAB, tags=("vtab_natural",)),
    Task("retrieval/flickr_1k_test_image_text_retrieval", "Flickr", RETRIEVAL, "mean_recall@1", 1000,
         group=RETRIEVAL_GROUP, tags=("retrieval",)),
    Task("retrieval/mscoco_2014_5k_test_image_text_retrieval", "MSCOCO", RETRIEVAL, "mean_recall@1", 5000,
         group=RETRIEVAL_GROUP, tags=("retrieval",)),
    Task("misc/winogavil", "WinoGAViL", WINOGAVIL, "jaccard_score_10-12", 3563, random_score=0.205,
         group=RETRIEVAL_GROUP, tags=("retrieval",)),
    Task("wilds/iwildcam", "iWildCam", WILDS, "F1-macro_all", 42791, 182, 0.143056, tags=("wilds",)),
    Task("wilds/camelyon17", "Camelyon17", WILDS, "acc1", 85054, 2, 0.5, tags=("wilds",)),
    Task("wilds/fmow", "FMoW", WILDS, "acc_worst_region", 22108, 62, 0.027193, tags=("wilds",)),
    Task("fairness/dollar_street", "Dollar Street", FAIRNESS, "acc_top5_wg", 3503, 58, tags=("fairness",)),
    Task("fairness/geode", "GeoDE", FAIRNESS, "acc_wg", 12488, 40, tags=("fairness",)),
    Task("fairness/fairface", "FairFace", FAIRNESS, None, 10954, tags=("fairness",)),
    Task("fairness/utkface", "UTKFace", FAIRNESS, None, 23703, tags=("fairness",)),
)
DATACOMP_KEYS = frozenset(t.key for t in DATACOMP_TASKS)
SCORED_TASKS: tuple[Task, ...] = tuple(t for t in DATACOMP_TASKS if t.main_metric is not None)

SYNTHETIC_TASKS: tuple[Task, ...] = (
    Task("synthetic_shape", "Synthetic shape", SYNTHETIC, "acc1", 600, 3, 1 / 3, SYNTHETIC_GROUP),
    Task("synthetic_colour", "Synthetic colour", SYNTHETIC, "acc1", 600, 6, 1 / 6, SYNTHETIC_GROUP),
)

TASKS: dict[str, Task] = {t.key: t for t in DATACOMP_TASKS + SYNTHETIC_TASKS}
TASK_SETS: dict[str, tuple[str, ...]] = {
    "synthetic": tuple(t.key for t in SYNTHETIC_TASKS),
    "datacomp38": tuple(t.key for t in DATACOMP_TASKS),  # the 38 scored ones plus FairFace and UTKFace
    "datacomp": tuple(t.key for t in DATACOMP_TASKS),
    "classification": tuple(t.key for t in DATACOMP_TASKS if t.task_type == CLASSIFICATION),
    "retrieval": tuple(t.key for t in DATACOMP_TASKS if t.task_type == RETRIEVAL),
}


def get_task(key_or_name: str) -> Task:
    """A task by key (``vtab/cifar100``), by name (``CIFAR-100``) or by its key's last part (``cifar100``)."""
    if key_or_name in TASKS:
        return TASKS[key_or_name]
    folded = key_or_name.strip().lower()
    for task in TASKS.values():
        if folded in (task.name.lower(), task.key.split("/")[-1].lower()):
            return task
    raise ConfigError(f"unknown task {key_or_name!r}; task sets: {', '.join(TASK_SETS)}; "
                      f"tasks: {', '.join(TASKS)}")
