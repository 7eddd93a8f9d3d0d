"""SegDecNet (Božič et al., mixed supervision): segmentation sub-network at stride 8 plus a decision sub-network.

Architecture per the paper's Table 1 and the authors' code (docs/IMPLEMENTATION_NOTES.md): the segmentation net has a
single first 5x5 conv with 32 channels (the table says two; the code has one), "feature norm" instead of batch norm,
a 15x15 conv with 1024 channels and a 1x1 head. The decision net sees the 1024 features plus the segmentation map
(1025 channels) and classifies from 66 pooled values.
"""

from __future__ import annotations

import torch
from torch import nn

STRIDE = 8
DECISION_STRIDE = 64  # the decision features are pooled three more times


class GradientMultiply(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by `factor` (0 stops the flow, the paper's "diode")."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, tensor: torch.Tensor, factor: float
    ) -> torch.Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


class FeatureNorm(nn.Module):
    """Per-sample, per-channel normalisation over the spatial dimensions, with a learned scale and bias.

    Follows the authors' code: x̂ = (x − mean) / sqrt(std + eps) with the unbiased spatial std (sic: the square root
    of the std, not of the variance). It needs at least two spatial positions.
    """

    def __init__(self, channels: int, eps: float = 1e-3):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        std, mean = torch.std_mean(features, dim=(2, 3), keepdim=True)
        gain = (
            self.scale * (std + self.eps).rsqrt()
        )  # (B, C, 1, 1): one full-size multiply instead of two ops
        return torch.addcmul(self.bias - mean * gain, features, gain)


def check_input_size(size: tuple[int, int]) -> None:
    """Height and width must be multiples of 8 (as in the authors' code) and leave the decision features at least
    two positions (its feature norm takes a spatial std)."""
    height, width = size
    if height % STRIDE or width % STRIDE:
        raise ValueError(f"SegDecNet input size {height}x{width} (HxW) must be divisible by {STRIDE}")
    if (height // DECISION_STRIDE) * (width // DECISION_STRIDE) < 2:
        raise ValueError(
            f"SegDecNet input size {height}x{width} (HxW) is too small: the decision features at stride "
            f"{DECISION_STRIDE} need at least two positions (e.g. 64x128 or 128x128)"
        )


def _conv(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        FeatureNorm(out_channels),
        nn.ReLU(),
    )


class SegDecNet(nn.Module):
    """Returns (decision logit (B,), segmentation logits (B, 1, H/8, W/8))."""

    def __init__(self, in_channels: int, volume_channels: int = 1024, volume_kernel: int = 15):
        super().__init__()
        self.segmentation = nn.Sequential(
            _conv(in_channels, 32, 5),
            nn.MaxPool2d(2),
            *[_conv(32 if i == 0 else 64, 64, 5) for i in range(3)],
            nn.MaxPool2d(2),
            *[_conv(64, 64, 5) for _ in range(4)],
            nn.MaxPool2d(2),
            _conv(64, volume_channels, volume_kernel),
        )
        self.seg_head = nn.Sequential(nn.Conv2d(volume_channels, 1, 1, bias=False), FeatureNorm(1))
        self.decision = nn.Sequential(
            nn.MaxPool2d(2),
            _conv(volume_channels + 1, 8, 5),
            nn.MaxPool2d(2),
            _conv(8, 16, 5),
            nn.MaxPool2d(2),
            _conv(16, 32, 5),
        )
        self.classifier = nn.Linear(2 * 32 + 2, 1)
        self.gradient_factor = 0.0  # 0 = gradient-flow adjustment on (paper §3.1), 1 = off
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-normal convolution weights (the authors' init); the linear layer keeps torch's default."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_normal_(module.weight)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input_size((images.shape[-2], images.shape[-1]))
        volume = self.segmentation(images)
        seg = self.seg_head(volume)
        decision_input = GradientMultiply.apply(torch.cat([volume, seg], dim=1), self.gradient_factor)
        features = self.decision(decision_input)
        seg_shortcut = GradientMultiply.apply(seg, self.gradient_factor)
        pooled = torch.cat(
            [
                features.amax(dim=(2, 3)),
                features.mean(dim=(2, 3)),
                seg_shortcut.amax(dim=(2, 3)),
                seg_shortcut.mean(dim=(2, 3)),
            ],
            dim=1,
        )
        return self.classifier(pooled).squeeze(1), seg
