"""Memory-bank machinery shared by PatchCore and the residual methods: locally aware patch features,
greedy coreset subsampling and exact nearest-neighbour search (faiss, on the GPU when its CUDA build is
installed and the job runs on CUDA)."""

from __future__ import annotations

import logging

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def local_patch_features(
    feature_maps: list[torch.Tensor], patch_size: int, dims: int, out_dims: int
) -> torch.Tensor:
    """PatchCore's locally aware patch features: (B, h, w, out_dims) on the first map's grid.

    Each layer's p×p neighbourhood (C·p² values) is average-pooled to `dims` values, deeper layers are upsampled
    bilinearly to the first layer's grid, and the stacked layers are pooled to `out_dims`.
    """
    batch, _, height, width = feature_maps[0].shape
    per_layer = []
    for fmap in feature_maps:
        channels = fmap.shape[1]
        patches = F.unfold(fmap, kernel_size=patch_size, padding=patch_size // 2)  # (B, C·p², h'·w')
        patches = patches.view(batch, channels * patch_size**2, *fmap.shape[-2:])
        if patches.shape[-2:] != (height, width):
            patches = F.interpolate(patches, size=(height, width), mode="bilinear", align_corners=False)
        flat = patches.permute(0, 2, 3, 1).reshape(-1, 1, channels * patch_size**2)
        per_layer.append(F.adaptive_avg_pool1d(flat, dims))  # (B·h·w, 1, dims)
    stacked = torch.cat(per_layer, dim=1).reshape(-1, 1, dims * len(feature_maps))
    return F.adaptive_avg_pool1d(stacked, out_dims).reshape(batch, height, width, out_dims)


def greedy_coreset(
    features: torch.Tensor, fraction: float, projection_dims: int, start_points: int, seed: int
) -> torch.Tensor:
    """Indices of an approximate greedy k-center coreset (k = fraction · N) computed on a random projection.

    Distances start as the mean distance to `start_points` random points, then each step adds the point farthest
    from the chosen set, as in the PatchCore reference's approximate greedy sampler.
    """
    count = len(features)
    target = max(1, round(count * fraction))
    if target >= count:
        return torch.arange(count)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if projection_dims and projection_dims < features.shape[1]:
            projection = nn.Linear(features.shape[1], projection_dims, bias=False)
            nn.init.normal_(projection.weight, generator=generator)
            projected = features @ projection.weight.T.to(features)
        else:
            projected = features
        starts = torch.randperm(count, generator=generator)[: min(start_points, count)].to(features.device)
        min_dist = torch.cdist(projected, projected[starts]).mean(dim=1)
        chosen = torch.empty(target, dtype=torch.long)
        for step in range(target):
            index = int(torch.argmax(min_dist))
            chosen[step] = index
            new_dist = torch.linalg.vector_norm(projected - projected[index], dim=1)
            min_dist = torch.minimum(min_dist, new_dist)
    return chosen


def faiss_gpu_available(device: torch.device) -> bool:
    """Whether kNN on `device` can use a faiss GPU index: a CUDA device and the CUDA build of faiss (the `gpu`
    extra, faiss-gpu-cu12) seeing a GPU. Asks faiss for GPUs only for a CUDA device, so that a CPU job (or the
    warm parent) never initialises CUDA through faiss."""
    if device.type != "cuda" or not hasattr(faiss, "StandardGpuResources"):
        return False
    return faiss.get_num_gpus() > 0


def flat_l2_index(dims: int, device: torch.device) -> tuple[faiss.Index, object | None]:
    """An exact L2 index for `dims`-dimensional vectors: on the GPU where faiss_gpu_available, else on the CPU.

    Returns (index, resources); keep the GPU resources (None on CPU) alive as long as the index.
    """
    if not faiss_gpu_available(device):
        return faiss.IndexFlatL2(dims), None
    resources = faiss.StandardGpuResources()
    config = faiss.GpuIndexFlatConfig()
    config.device = device.index or 0  # inside a GPU lease the leased device is the only visible one
    return faiss.GpuIndexFlatL2(resources, dims, config), resources


class NearestNeighbours:
    """Exact L2 nearest neighbours of query vectors in a memory bank (faiss flat index, on `device`'s GPU when
    the CUDA build of faiss is installed)."""

    def __init__(self, bank: np.ndarray, device: torch.device | None = None):
        self.bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.index, self._resources = flat_l2_index(self.bank.shape[1], device or torch.device("cpu"))
        self.index.add(self.bank)
        log.info(
            "faiss kNN index on the %s (%d bank vectors)", "GPU" if self.on_gpu else "CPU", len(self.bank)
        )

    @property
    def on_gpu(self) -> bool:
        return self._resources is not None

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(distances, indices) of the k nearest bank vectors; distances are Euclidean (not squared)."""
        squared, indices = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return np.sqrt(np.maximum(squared, 0.0)), indices
