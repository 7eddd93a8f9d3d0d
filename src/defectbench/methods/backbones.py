"""Backbones from timm, with weights only from the local cache (never from a hub at run time)."""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from torch import nn

from defectbench.data.images import DataError

WEIGHTS_DIR_ENV = "DEFECTBENCH_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = Path("resources/weights")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def weights_path(name: str, weights_dir: Path | None = None) -> Path:
    """Where the cached ImageNet weights of timm model `name` are expected: `<weights_dir>/<name>.pth`."""
    directory = weights_dir or Path(os.environ.get(WEIGHTS_DIR_ENV, DEFAULT_WEIGHTS_DIR))
    return directory / f"{name}.pth"


def create_backbone(
    name: str, pretrained: bool, weights_dir: Path | None = None, seed: int = 0, **timm_kwargs: object
) -> nn.Module:
    """A timm model in eval mode; random weights seeded by `seed`, or the cached pretrained ones."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, **timm_kwargs)
    if pretrained:
        path = weights_path(name, weights_dir)
        if not path.exists():
            raise DataError(
                f"pretrained weights for {name} not found at {path}; run `snakemake {path}` with internet, "
                f"or place the timm state dict there (or set pretrained: false)"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, _unexpected = model.load_state_dict(state, strict=False)
        if any(not key.startswith(("fc.", "head", "classifier")) for key in missing):
            raise DataError(f"{path} does not match {name}: missing {missing[:5]}; re-download it")
    return model.eval()


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8-range (N, 3, H, W) tensor in [0, 255] → ImageNet-normalised float."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std
