"""ResNet-FPN with P3-P5 score heads (RFL+RIS supplement 1.2.1), for RFL with a learned residual-feature input."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.misc import FrozenBatchNorm2d

from defectbench.data.images import DataError
from defectbench.methods.backbones import imagenet_normalize, weights_path

LEVELS = {"layer2": "p3", "layer3": "p4", "layer4": "p5"}  # strides 8, 16, 32


def resnet_body(arch: str, pretrained: bool, seed: int) -> nn.Module:
    """A torchvision ResNet with frozen batch norm (as torchvision's detection FPNs), random weights seeded by
    `seed` or the local ImageNet weights (resources/weights/<arch>.pth: timm's ResNet keys are torchvision's)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        body = getattr(torchvision.models, arch)(weights=None, norm_layer=FrozenBatchNorm2d)
    if pretrained:
        path = weights_path(arch)
        if not path.exists():
            raise DataError(
                f"pretrained weights for {arch} not found at {path}; place them there (or pretrained: false)"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, _ = body.load_state_dict(state, strict=False)
        if any(not key.startswith("fc.") for key in missing):
            raise DataError(f"{path} does not match torchvision's {arch}: missing {missing[:5]}")
    return body


def stage_channels(body: nn.Module) -> list[int]:
    """Output channels of layer2-layer4 of a torchvision ResNet (basic or bottleneck blocks)."""
    channels = []
    for name in LEVELS:
        block = getattr(body, name)[-1]
        last = block.conv3 if hasattr(block, "conv3") else block.conv2
        channels.append(last.out_channels)
    return channels


class ScoreFPN(nn.Module):
    """ResNet-FPN; each of P3, P4, P5 → 3×3 conv → ReLU → 1×1 conv → one score logit per position.

    With `residual_dims` > 0 (RFL) the head of a level sees [P_l, ρ(|R|)_l]: |R| the absolute residual features of
    the shared residual stage (against the references RIS selected), ρ a learned 1×1 conv + ReLU to the FPN width,
    resampled to the level's grid (max-pooled when coarser, so that small residual peaks survive). Without (MIL),
    the head sees P_l only."""

    def __init__(self, arch: str, pretrained: bool, seed: int, channels: int, residual_dims: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._build(resnet_body(arch, pretrained, seed), channels, residual_dims)

    def _build(self, body: nn.Module, channels: int, residual_dims: int) -> None:
        """FPN, residual projection and heads (their random initialisation seeded by the caller)."""
        self.fpn = BackboneWithFPN(body, dict(LEVELS), stage_channels(body), channels)
        self.fpn.fpn.extra_blocks = None  # P3-P5 only, no pooled P6
        self.residual_dims = residual_dims
        self.residual = (
            nn.Sequential(nn.Conv2d(residual_dims, channels, 1), nn.ReLU(inplace=True))
            if residual_dims
            else None
        )
        # per-channel RMS of |R| over the normal training images (set by fit): residuals are orders of magnitude
        # smaller than FPN features, and unscaled the residual path would barely learn (docs/rflris.md)
        self.register_buffer("residual_scale", torch.ones(residual_dims))
        width = 2 * channels if residual_dims else channels
        self.heads = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(width, channels, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(channels, 1, 1)
            )
            for _ in LEVELS
        )

    def pyramid(self, images: torch.Tensor) -> list[torch.Tensor]:
        """P3, P4, P5 of uint8-range images (N, 3, H, W)."""
        return list(self.fpn(imagenet_normalize(images)).values())

    def score_logits(
        self, pyramid: list[torch.Tensor], residuals: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Per-level score logits (N, 1, h_l, w_l); `residuals` (N, d, h, w) signed residual features for RFL."""
        learned = None
        if self.residual is not None:
            if residuals is None:
                raise ValueError("RFL needs the residual features of its images")
            learned = self.residual(residuals.abs() / self.residual_scale[:, None, None])
        logits = []
        for features, head in zip(pyramid, self.heads, strict=True):
            if learned is not None:
                features = torch.cat([features, resample(learned, tuple(features.shape[-2:]))], dim=1)
            logits.append(head(features))
        return logits


def resample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) to `size`: max pooling where it is coarser, bilinear interpolation otherwise."""
    if maps.shape[-2] >= size[0] and maps.shape[-1] >= size[1]:
        return F.adaptive_max_pool2d(maps, size)
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def fused_map(logits: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """MIL fusion: the maximum over levels of the sigmoid score maps, bilinearly upsampled to `size` → (N, H, W)."""
    maps = [F.interpolate(torch.sigmoid(x), size=size, mode="bilinear", align_corners=False) for x in logits]
    return torch.stack(maps).amax(dim=0)[:, 0]


def mil_loss(logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Mean over levels of the BCE between the global max of each level's score map and the image label."""
    losses = [
        F.binary_cross_entropy_with_logits(level.flatten(1).amax(dim=1), labels.float()) for level in logits
    ]
    return torch.stack(losses).mean()
