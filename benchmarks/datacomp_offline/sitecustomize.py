"""Lets DataComp's own ``baselines.py`` run offline (and ``image_based`` on the CPU), for
``benchmarks/datacomp_parity.py``.

Put this folder on ``PYTHONPATH`` of DataComp's interpreter: every process it starts (its ``spawn``
workers too) then runs this at start-up. With ``POOLSIEVE_DC_ASSETS="name=path,name=path"`` and
``POOLSIEVE_DC_REPO`` (DataComp's checkout) set, ``baselines.utils.download(name)`` returns the local
file given for ``name`` instead of fetching it (DataComp's code is otherwise untouched):
``imagenet21k_wordnet_ids`` -> timm's copy of the same list (same sha256), ``fasttext`` -> the
``lid.176.ftz`` poolsieve uses (``lid.176.bin`` cannot be fetched here), ``small_centroids`` and
``in1k_clip_vit_l14_{0..4}`` -> the benchmark's generated centroid and target files.

DataComp reads those pickles with a bare ``torch.load``, which torch >= 2.6 runs weights-only and
which refuses a pickled numpy array: for exactly the files given here as ``*_centroids`` or
``in1k_clip_vit_l14_*`` (files the benchmark wrote itself), and only inside DataComp's processes,
``torch.load`` runs with ``weights_only=False``, as DataComp's code expects.

With ``POOLSIEVE_DC_CPU=1`` DataComp's GPU-only ``image_based`` runs on the CPU:
``torch.cuda.is_available()`` answers True and ``device_count()`` 1, and a tensor sent to ``cuda``/
``cuda:N`` (``.to``, ``.cuda``) stays on the CPU, so its ``get_centroid_ids_gpu`` computes the same
float32 ``einsum`` and ``argmax`` there.

DataComp's ``image_based`` counts words with ``fasttext.tokenize``, which only fastText's own package
has (``fasttext-predict`` has not): its interpreter carries ``fasttext`` 0.9.3, whose
``np.array(x, copy=False)`` NumPy 2 refuses; its module sees a numpy whose ``array(copy=False)`` is
``asarray``, NumPy 1's meaning. Without the variables this does nothing.
"""

import os
import sys

REFERENCE_PREFIXES = ("in1k_clip_vit_l14_",)
REFERENCE_SUFFIXES = ("_centroids",)


def _install() -> None:
    assets = os.environ.get("POOLSIEVE_DC_ASSETS")
    repo = os.environ.get("POOLSIEVE_DC_REPO")
    if not assets or not repo:
        return
    local = dict(item.split("=", 1) for item in assets.split(",") if "=" in item)
    if repo not in sys.path:
        sys.path.insert(0, repo)
    import baselines.utils as utils

    fetch = utils.download

    def download(name, root=None):
        return local[name] if name in local else fetch(name, root)

    utils.download = download
    references = {os.path.realpath(path) for name, path in local.items()
                  if name.startswith(REFERENCE_PREFIXES) or name.endswith(REFERENCE_SUFFIXES)}
    if references:
        _load_references_unrestricted(references)
    if os.environ.get("POOLSIEVE_DC_CPU") == "1":
        _cuda_on_cpu()
    _fasttext_on_numpy2()


def _fasttext_on_numpy2() -> None:
    import numpy

    try:
        import fasttext.FastText as module
    except ImportError:
        return
    if int(numpy.__version__.split(".")[0]) < 2 or not hasattr(module, "np"):
        return

    class Numpy1Copy:
        """numpy, with ``array(x, copy=False)`` meaning "copy only when needed" as in NumPy 1."""

        def __getattr__(self, name):
            return getattr(numpy, name)

        @staticmethod
        def array(obj, *args, copy=True, **kwargs):
            if copy is False:
                return numpy.asarray(obj, *args, **kwargs)
            return numpy.array(obj, *args, copy=copy, **kwargs)

    module.np = Numpy1Copy()


def _load_references_unrestricted(references: set) -> None:
    import torch

    load = torch.load

    def load_reference(f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and os.path.realpath(f) in references:
            kwargs["weights_only"] = False
        return load(f, *args, **kwargs)

    torch.load = load_reference


def _cuda_on_cpu() -> None:
    import torch

    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 1
    to = torch.Tensor.to

    def on_cpu(device):
        if isinstance(device, torch.device) and device.type == "cuda":
            return torch.device("cpu")
        if isinstance(device, str) and device.split(":")[0] == "cuda":
            return "cpu"
        return "cpu" if isinstance(device, int) and not isinstance(device, bool) else device

    def to_cpu(self, *args, **kwargs):
        args = tuple(on_cpu(a) for a in args)
        if "device" in kwargs:
            kwargs["device"] = on_cpu(kwargs["device"])
        return to(self, *args, **kwargs)

    torch.Tensor.to = to_cpu
    torch.Tensor.cuda = lambda self, *args, **kwargs: self


_install()
