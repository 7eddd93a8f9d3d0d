"""f-AnoGAN networks (Schlegl et al., Medical Image Analysis 2019): the residual WGAN-GP generator, critic and
encoder of the authors' 64x64 code (after Gulrajani et al.'s ResNet architecture), generalised to any patch size
that is a power of two (one resampling block per halving down to 4x4)."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

BASE_SIZE = 4  # spatial size at the bottleneck


def resample_blocks(patch_size: int) -> int:
    """Number of up/down-sampling blocks between a `patch_size` patch and the 4x4 bottleneck."""
    blocks = math.log2(patch_size / BASE_SIZE) if patch_size >= 2 * BASE_SIZE else 0
    if blocks < 1 or not float(blocks).is_integer():
        raise ValueError(f"patch_size must be a power of two of at least 8, got {patch_size}")
    return int(blocks)


def channel_multipliers(blocks: int) -> list[int]:
    """Width multipliers from the patch down to the bottleneck: 1, 2, 4, 8, 8 for 64x64 (the authors' code)."""
    return [min(2**index, 8) for index in range(blocks + 1)]


class ResidualBlock(nn.Module):
    """norm → ReLU → 3x3 conv → norm → ReLU → 3x3 conv, resampled up (nearest x2 before the first conv) or down
    (2x2 mean-pool after the second conv), plus a 1x1-conv shortcut resampled the same way."""

    def __init__(self, in_channels: int, out_channels: int, resample: str, norm: str):
        super().__init__()
        if resample not in ("up", "down"):
            raise ValueError(f"resample must be 'up' or 'down', not {resample!r}")
        self.resample = resample
        mid = out_channels if resample == "up" else in_channels
        self.norm1, self.norm2 = _norm(norm, in_channels), _norm(norm, mid)
        self.conv1 = nn.Conv2d(in_channels, mid, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(mid, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            shortcut = self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))
            out = F.interpolate(F.relu(self.norm1(x)), scale_factor=2, mode="nearest")
            out = self.conv2(F.relu(self.norm2(self.conv1(out))))
        else:
            shortcut = self.shortcut(F.avg_pool2d(x, 2))
            out = self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x))))))
            out = F.avg_pool2d(out, 2)
        return shortcut + out


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":  # over (C, H, W) per sample with a per-channel affine: no batch coupling for the GP
        return nn.GroupNorm(1, channels)
    raise ValueError(f"unknown normalisation {kind!r}")


class Generator(nn.Module):
    """z (N, z_dim) → patch (N, C, P, P) in [-1, 1]; batch norm (the authors' code)."""

    def __init__(self, z_dim: int, dim: int, patch_size: int, channels: int):
        super().__init__()
        widths = [dim * m for m in reversed(channel_multipliers(resample_blocks(patch_size)))]
        self.head_channels = widths[0]
        self.input = nn.Linear(z_dim, widths[0] * BASE_SIZE * BASE_SIZE)
        self.blocks = nn.Sequential(
            *(ResidualBlock(a, b, "up", "batch") for a, b in itertools.pairwise(widths))
        )
        self.out_norm = nn.BatchNorm2d(widths[-1])
        self.output = nn.Conv2d(widths[-1], channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.input(z).view(len(z), self.head_channels, BASE_SIZE, BASE_SIZE)
        return torch.tanh(self.output(F.relu(self.out_norm(self.blocks(x)))))


class _DownNet(nn.Module):
    """3x3 conv → residual down blocks → flattened bottleneck features."""

    def __init__(self, dim: int, patch_size: int, channels: int, norm: str):
        super().__init__()
        widths = [dim * m for m in channel_multipliers(resample_blocks(patch_size))]
        self.input = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.blocks = nn.Sequential(
            *(ResidualBlock(a, b, "down", norm) for a, b in itertools.pairwise(widths))
        )
        self.feature_dim = widths[-1] * BASE_SIZE * BASE_SIZE

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.input(x)).flatten(1)


class Critic(_DownNet):
    """WGAN-GP critic with layer norm; returns (critic value (N,), bottleneck features (N, F)). The features are
    f(·) of the izi_f loss and of the anomaly score."""

    def __init__(self, dim: int, patch_size: int, channels: int):
        super().__init__(dim, patch_size, channels, norm="layer")
        self.output = nn.Linear(self.feature_dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return self.output(features)[:, 0], features


class Encoder(_DownNet):
    """Patch → z, the critic's architecture with batch norm and a linear map to z (no z regularisation)."""

    def __init__(self, z_dim: int, dim: int, patch_size: int, channels: int):
        super().__init__(dim, patch_size, channels, norm="batch")
        self.output = nn.Linear(self.feature_dim, z_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(x))
