"""Backbones from timm, with weights only from the verified local cache (never from a hub at run time)."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from defectbench.data.images import DataError
from defectbench.methods.weights import verify_weights, weights_path

# weights_path (methods.weights) is re-exported here: methods import it from backbones.
__all__ = ["create_backbone", "imagenet_normalize", "weights_path"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def create_backbone(
    name: str, pretrained: bool, weights_dir: Path | None = None, seed: int = 0, **timm_kwargs: object
) -> nn.Module:
    """A timm model in eval mode; random weights seeded by `seed`, or the verified local ImageNet weights of the
    registry entry `name` (timm adapts torchvision's key names through the model's own checkpoint filter)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if not pretrained:
            return timm.create_model(name, pretrained=False, **timm_kwargs).eval()
        path = verify_weights(name, weights_dir)
        try:
            model = timm.create_model(
                name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **timm_kwargs
            )
        except (RuntimeError, KeyError) as err:
            raise DataError(
                f"{path} does not match timm model {name} ({err}); delete it and fetch it again"
            ) from err
    return model.eval()


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8-range (N, 3, H, W) tensor in [0, 255] → ImageNet-normalised float."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std
