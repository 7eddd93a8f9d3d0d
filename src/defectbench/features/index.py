"""The faiss index the residual stage searches: a GPU flat index when the job holds a CUDA device and faiss was
built with GPU support, the exact CPU flat index otherwise (same results, up to float rounding)."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import torch


def gpu_faiss_available() -> bool:
    """Whether this faiss build can put an index on a GPU (faiss-gpu / the `gpu` extra)."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


_GPU_RESOURCES: Any = None


def flat_l2_index(vectors: np.ndarray, device: torch.device) -> Any:
    """An exact L2 index over `vectors` (T, d): on the job's GPU when possible, else on the CPU."""
    global _GPU_RESOURCES
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if device.type == "cuda" and gpu_faiss_available():
        if _GPU_RESOURCES is None:
            _GPU_RESOURCES = faiss.StandardGpuResources()
        config = faiss.GpuIndexFlatConfig()
        config.device = device.index or 0
        index = faiss.GpuIndexFlatL2(_GPU_RESOURCES, vectors.shape[1], config)
    else:
        index = faiss.IndexFlatL2(vectors.shape[1])
    index.add(vectors)
    return index


def nearest(index: Any, queries: np.ndarray) -> np.ndarray:
    """Index (M,) of the nearest indexed vector of each query (M, d)."""
    _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), 1)
    return found[:, 0]
