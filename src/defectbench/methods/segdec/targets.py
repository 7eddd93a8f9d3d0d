"""Training targets of one image: soft segmentation target and loss weights at stride 8 (paper §3.2, Eq. 4-5)."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from defectbench.data.weak_labels import dilate, segdec_loss_weights
from defectbench.methods.segdec.model import STRIDE


def downsample(maps: np.ndarray) -> np.ndarray:
    """(..., H, W) → (..., H/8, W/8) soft average: reflection pad 8 and a 17x17 average pool with stride 8."""
    tensor = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    batch = tensor.reshape(-1, 1, *tensor.shape[-2:])
    pooled = F.avg_pool2d(F.pad(batch, (STRIDE,) * 4, mode="reflect"), 2 * STRIDE + 1, stride=STRIDE)
    return pooled.reshape(*tensor.shape[:-2], *pooled.shape[-2:]).numpy()


def segmentation_targets(
    mask: np.ndarray,
    size: tuple[int, int],
    dilation: int,
    distance_transform: bool,
    p: float,
    w_pos: float,
    normalisation: str = "region",
) -> tuple[np.ndarray, np.ndarray]:
    """(target, weights), each float32 (H/8, W/8), from a boolean mask at the image's own resolution.

    The mask is dilated with a `dilation`² ones kernel, resized (bilinear, giving soft edges as in the authors'
    code) to the network input `size` = (H, W); positive pixels of the resized mask get the distance-transform
    weights w_pos·(D/D_max)^p, negatives 1, D_max per region or image-wide (`normalisation`, see
    segdec_loss_weights). Without `distance_transform` every pixel weighs 1 (plain mean BCE).
    """
    dilated = dilate(mask, dilation).astype(np.float32)
    resized = cv2.resize(dilated, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    if distance_transform:
        weights = segdec_loss_weights(resized > 0, p=p, w_pos=w_pos, normalisation=normalisation)
    else:
        weights = np.ones_like(resized)
    target, weight = downsample(np.stack([resized, weights]))
    return target, weight
