"""Networks of Uninformed Students (Bergmann et al., CVPR 2020): the dense teacher and the patch-sized students."""

from __future__ import annotations

import torch
from torch import nn

from defectbench.methods.backbones import create_backbone, imagenet_normalize

STUDENT_STRIDE = 8  # three 2x2 max-pools


class PatchStudent(nn.Module):
    """Bergmann et al.'s p = 65 patch network (supplement), run fully convolutionally on a whole image.

    5x5 conv(w) → pool → 5x5 conv(w) → pool → 5x5 conv(w) → pool → 4x4 conv(2w) → 1x1 conv(d), leaky ReLU 5e-3
    between them. The original evaluates it on every 65x65 patch (fast dense extraction at stride 1); here the
    convolutions are zero-padded so that it yields one descriptor per 8x8 cell, aligned with the teacher's grid.
    """

    def __init__(self, in_channels: int, width: int, out_channels: int):
        super().__init__()

        def act() -> nn.Module:
            return nn.LeakyReLU(5e-3)

        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 5, padding=2), act(), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 5, padding=2), act(), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 5, padding=2), act(), nn.MaxPool2d(2),
            nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(width, 2 * width, 4), act(),
            nn.Conv2d(2 * width, out_channels, 1),
        )  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class DenseTeacher(nn.Module):
    """One stride-8 layer of a timm backbone as the descriptor network (frozen).

    Bergmann et al. distil an ImageNet ResNet-18 into a patch network before training the students; a fully
    convolutional backbone layer already yields one descriptor per 8x8 cell, so it is used as the teacher directly
    (pretrained in the paper configuration, random weights in the demo) and the distillation step is skipped.
    """

    def __init__(self, backbone: str, layer: int, pretrained: bool, seed: int):
        super().__init__()
        self.body = create_backbone(backbone, pretrained, seed=seed, features_only=True, out_indices=(layer,))
        reduction = self.body.feature_info.reduction()[0]
        if reduction != STUDENT_STRIDE:
            raise ValueError(
                f"teacher layer {layer} of {backbone} has stride {reduction}; the students need stride "
                f"{STUDENT_STRIDE}: choose another teacher_layer"
            )
        self.channels = self.body.feature_info.channels()[0]
        for parameter in self.body.parameters():
            parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> DenseTeacher:
        super().train(mode)
        self.body.eval()  # frozen batch-norm statistics
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)[0]


def normalized_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) with C = 1 or 3 → ImageNet-normalised 3-channel float (grey is replicated)."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return imagenet_normalize(images)
