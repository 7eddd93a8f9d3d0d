"""Shared training machinery of the image-label methods of the RFL+RIS paper (RFL+RIS, MIL, WeCLIP, SeCo):
images as tensors, albumentations augmentation, learning-rate schedules and an iteration loop with resume."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F

from defectbench.data.samples import Sample
from defectbench.training import EpochLoop

PRELOAD_LIMIT_BYTES = 1 << 30  # training images are kept in memory below this (demo); read per batch above


class ImageStore:
    """uint8 (H, W, 3) images of samples at one size: preloaded when small, read from disk otherwise."""

    def __init__(self, samples: Sequence[Sample], size: tuple[int, int]):
        self.samples = list(samples)
        self.size = tuple(size)
        fits = len(self.samples) * size[0] * size[1] * 3 <= PRELOAD_LIMIT_BYTES
        self._cache = [s.read_image(self.size) for s in self.samples] if fits else None

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, index: int) -> np.ndarray:
        return self._cache[index] if self._cache is not None else self.samples[index].read_image(self.size)


def to_tensor(images: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """uint8 (H, W, 3) arrays → float (N, 3, H, W) in [0, 255]."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return batch.to(device)


def augmentation(params: Mapping[str, Any], colour: bool = True, geometric: bool = True) -> A.Compose:
    """HSV colour, scaling, flipping, rotation and shifting (RFL+RIS supplement 1.2.1), through albumentations;
    `colour` / `geometric` alone for RFL, whose residuals are taken of the geometrically augmented image."""
    aug = params["augment"]
    steps = (
        [A.HueSaturationValue(aug["hue"], aug["saturation"], aug["value"], p=aug["p_hsv"])] if colour else []
    )
    if geometric:
        steps += [
            A.Affine(
                scale=tuple(aug["scale"]),
                rotate=tuple(aug["rotate"]),
                translate_percent=tuple(aug["translate"]),
                border_mode=0,
                p=aug["p_affine"],
            ),
            A.HorizontalFlip(p=aug["p_flip"]),
        ]
    return A.Compose(steps, seed=0)


def augment_batch(transform: A.Compose, images: list[np.ndarray], seed: int) -> list[np.ndarray]:
    """Augment with the transform reseeded per batch, so that a resumed run draws the same augmentations."""
    transform.set_random_seed(seed)
    return [transform(image=image)["image"] for image in images]


def warmup_cosine(total: int, warmup: int, multiplier: float) -> Callable[[int], float]:
    """LR factor: linear warm-up from `multiplier` to 1 over `warmup` steps, then cosine annealing to 0."""

    def factor(step: int) -> float:
        if step < warmup:
            return multiplier + (1.0 - multiplier) * step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def warmup_poly(total: int, warmup: int, power: float, multiplier: float = 1e-6) -> Callable[[int], float]:
    """LR factor of WeCLIP and SeCo: linear warm-up, then polynomial decay (1 - t/T)^power."""

    def factor(step: int) -> float:
        if step < warmup:
            return multiplier + (1.0 - multiplier) * step / max(1, warmup)
        return (1.0 - min(step, total - 1) / total) ** power

    return factor


def run_iterations(
    iterations: int,
    log_every: int,
    checkpoint: Path | None,
    state: Mapping[str, Any],
    step: Callable[[int], Mapping[str, float]],
    desc: str,
) -> list[dict[str, float]]:
    """Run `step(iteration)` for every iteration through EpochLoop in chunks of `log_every` (progress, resume);
    the log holds the chunk means of every logged value (over the iterations that logged it)."""
    chunks = math.ceil(iterations / log_every)

    def chunk(index: int) -> dict[str, float]:
        logs = [step(i) for i in range(index * log_every, min(iterations, (index + 1) * log_every))]
        keys = dict.fromkeys(key for log in logs for key in log)  # a loss may start later (SeCo)
        return {k: float(np.mean([log[k] for log in logs if k in log])) for k in keys}

    return EpochLoop(chunks, checkpoint, every=max(1, chunks // 10), desc=desc).run(state, chunk)


def batch_indices(generator: torch.Generator, n: int, batch_size: int) -> list[int]:
    """`batch_size` training images drawn uniformly (with replacement when the set is smaller)."""
    if n >= batch_size:
        return torch.randperm(n, generator=generator)[:batch_size].tolist()
    return torch.randint(n, (batch_size,), generator=generator).tolist()


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) or (N, 1, H, W) maps bilinearly resized to `size` → (N, *size)."""
    if maps.dim() == 3:
        maps = maps[:, None]
    return F.interpolate(maps.float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
