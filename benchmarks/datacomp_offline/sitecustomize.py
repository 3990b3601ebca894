"""Lets DataComp's own ``baselines.py`` run offline, for ``benchmarks/datacomp_parity.py``.

Put this folder on ``PYTHONPATH`` of DataComp's interpreter: every process it starts (its ``spawn``
workers too) then runs this at start-up. With ``POOLSIEVE_DC_ASSETS="name=path,name=path"`` and
``POOLSIEVE_DC_REPO`` (DataComp's checkout) set, ``baselines.utils.download(name)`` returns the local
file given for ``name`` instead of fetching it (DataComp's code is otherwise untouched):
``imagenet21k_wordnet_ids`` -> timm's copy of the same list (same sha256), ``fasttext`` -> the
``lid.176.ftz`` poolsieve uses (``lid.176.bin`` cannot be fetched here). Without the variables this
does nothing.
"""

import os
import sys


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


_install()
