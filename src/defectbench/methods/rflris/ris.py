"""RIS: reference image selection among the normal training images by global feature similarity.

RECONSTRUCTION, kept small on purpose: the shared residual-feature stage (defectbench.features, WeakREST issue)
is to absorb this retrieval as one of its settings (global descriptor: GAP of the last ResNet stage; cosine
similarity; K nearest; never the image itself)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from defectbench.methods.backbones import imagenet_normalize


@torch.no_grad()
def global_descriptors(body: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised global average pool of the last stage of a torchvision ResNet → (N, D)."""
    x = imagenet_normalize(images)
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
        x = getattr(body, name)(x)
    return F.normalize(x.mean(dim=(2, 3)), dim=1)


def select_references(
    queries: torch.Tensor, pool: torch.Tensor, k: int, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """Indices (Q, k) of the k pool descriptors most similar (cosine) to each query, most similar first;
    `exclude[q]` (a pool index or -1) is never chosen: a training image does not reference itself."""
    similarity = queries @ pool.T
    if exclude is not None:
        rows = torch.nonzero(exclude >= 0).flatten()
        similarity[rows, exclude[rows]] = -torch.inf
    available = pool.shape[0] - (1 if exclude is not None and (exclude >= 0).any() else 0)
    if available < 1:
        raise ValueError("RIS needs at least one normal training image besides the query")
    k = min(k, available)
    return similarity.topk(k, dim=1).indices
