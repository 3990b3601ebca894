"""faiss's GPU build, when it is the one installed; devices themselves are resolved by ``core.devices``.

faiss is imported inside the function so that importing a filter module stays light.
"""

from __future__ import annotations


def faiss_gpu_available() -> bool:
    """True when the installed faiss is a GPU build and sees a GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
