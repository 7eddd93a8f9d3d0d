"""Samples' images as a batch tensor: the one image loader the networks share."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from defectbench.data.samples import Sample


def load_images(samples: Sequence[Sample], size: Sequence[int], mode: str = "RGB") -> torch.Tensor:
    """uint8 (N, C, H, W) tensor of the samples' images resized to `size` = (H, W); C = 3 (RGB) or 1 (L)."""
    height, width = int(size[0]), int(size[1])
    array = np.stack([sample.read_image((height, width), mode) for sample in samples])
    if array.ndim == 3:  # mode L: (N, H, W)
        array = array[..., None]
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
