"""Samples' images as a batch tensor: the one image loader the networks share."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from defectbench.data.samples import Sample


def load_images(
    samples: Sequence[Sample], size: Sequence[int], mode: str = "RGB", channels_last: bool = False
) -> torch.Tensor:
    """uint8 (N, C, H, W) tensor of the samples' images resized to `size` = (H, W); C = 3 (RGB) or 1 (L).

    `channels_last` keeps the decoded (N, H, W, C) buffer under the (N, C, H, W) view instead of copying it into
    contiguous memory: convolutions pick their kernels by layout, so the last bits of a network's output depend
    on it (PatchCore and SegDecNet were measured with channels-last input, the CAM networks with contiguous)."""
    height, width = int(size[0]), int(size[1])
    array = np.stack([sample.read_image((height, width), mode) for sample in samples])
    if array.ndim == 3:  # mode L: (N, H, W)
        array = array[..., None]
    images = torch.from_numpy(array).permute(0, 3, 1, 2)
    return images if channels_last else images.contiguous()
