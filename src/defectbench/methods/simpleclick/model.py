"""SimpleClick's network on timm's ViT (no code of its repository): the click maps (previous mask, positive and
negative disks) are patch-embedded and added to the image tokens; the ViT attends in windows of 224 px (the
pre-training size) with a global block closing each group; a simple feature pyramid and a SegFormer-style MLP
head give logits at 1/4 resolution, upsampled to the input.

`map_published` renames the published checkpoint's keys (RITM/SimpleClick layout: `backbone.*`,
`patch_embed_coords.*`, `neck.*`, `head.*`) to these modules' (loaded by `click_baselines.load_published`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(1, channels)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple pyramid from the last ViT map (stride 16): strides 4, 8, 16, 32 with GroupNorm."""

    def __init__(self, dim: int, out_dims: Sequence[int]):
        super().__init__()
        c4, c8, c32 = max(out_dims[0] * 2, dim // 2), max(out_dims[1], dim // 2), max(out_dims[3], dim * 2)
        self.down_4 = nn.Sequential(
            nn.ConvTranspose2d(dim, c4, 2, stride=2), _gn(c4), nn.GELU(),
            nn.ConvTranspose2d(c4, c4 // 2, 2, stride=2), _gn(c4 // 2),
            nn.Conv2d(c4 // 2, out_dims[0], 1), _gn(out_dims[0]), nn.GELU(),
        )  # fmt: skip
        self.down_8 = nn.Sequential(
            nn.ConvTranspose2d(dim, c8, 2, stride=2), _gn(c8),
            nn.Conv2d(c8, out_dims[1], 1), _gn(out_dims[1]), nn.GELU(),
        )  # fmt: skip
        self.down_16 = nn.Sequential(nn.Conv2d(dim, out_dims[2], 1), _gn(out_dims[2]), nn.GELU())
        self.down_32 = nn.Sequential(
            nn.Conv2d(dim, c32, 2, stride=2),
            _gn(c32),
            nn.Conv2d(c32, out_dims[3], 1),
            _gn(out_dims[3]),
            nn.GELU(),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.down_4(x), self.down_8(x), self.down_16(x), self.down_32(x)]


class MLPHead(nn.Module):
    """SegFormer's all-MLP head: 1x1 projections + ReLU of every level resized to stride 4, fused, classified."""

    def __init__(self, in_dims: Sequence[int], channels: int, dropout: float = 0.1):
        super().__init__()
        self.project = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_dims)
        self.fuse = nn.Conv2d(channels * len(in_dims), channels, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, 1, 1)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        size = levels[0].shape[-2:]
        projected = [
            F.interpolate(F.relu(conv(x)), size=size, mode="bilinear", align_corners=False)
            for conv, x in zip(self.project, levels, strict=True)
        ]
        return self.classifier(self.dropout(F.relu(self.fuse(torch.cat(projected, dim=1)))))


class SimpleClickNet(nn.Module):
    """Plain ViT + click-map patch embedding + simple pyramid + MLP head (SimpleClick, Fig. 2)."""

    def __init__(
        self,
        img_size: int = 448,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        window_grid: int = 14,
        neck_dims: Sequence[int] = (128, 256, 512, 1024),
        head_channels: int = 256,
    ):
        super().__init__()
        if depth % 2 or (img_size // patch_size) % window_grid:
            raise ValueError(
                f"SimpleClick needs an even depth and a {img_size // patch_size}-patch grid divisible by the "
                f"window of {window_grid} patches"
            )
        self.img_size, self.window_grid = img_size, window_grid
        self.vit = VisionTransformer(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=heads,
            num_classes=0, global_pool="", final_norm=False,
        )  # fmt: skip
        self.click_embed = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.neck = SimpleFeaturePyramid(embed_dim, neck_dims)
        self.head = MLPHead(neck_dims, head_channels)
        # blocks per group: 6 for ViT-B's 12 (SimpleClick), else a quarter of the depth; the last one is global
        self.group = 6 if depth == 12 else max(1, depth // 4)

    def forward(
        self,
        image: torch.Tensor,
        clicks: torch.Tensor,
        previous: torch.Tensor,
        words: torch.Tensor | None = None,
        word_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """image (B, 3, S, S) normalised; clicks (B, 2, S, S) disks; previous (B, 1, S, S) -> logits (B, 1, S, S).
        `words` is accepted and ignored (no language branch): the ADClick trainer fine-tunes this network too."""
        tokens = self.vit.patch_embed(image) + self.click_embed(torch.cat([previous, clicks], dim=1)).flatten(
            2
        ).transpose(1, 2)
        tokens = tokens + self.vit.pos_embed[:, self.vit.num_prefix_tokens :]
        grid = self.vit.patch_embed.grid_size
        for index, block in enumerate(self.vit.blocks, start=1):
            if index % self.group:
                tokens = self._unwindow(block(self._window(tokens, grid)), grid)
            else:
                tokens = block(tokens)
        batch, _, channels = tokens.shape
        features = tokens.transpose(1, 2).reshape(batch, channels, *grid)
        logits = self.head(self.neck(features))
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=True)

    def _window(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, h*w, C) -> (B * windows, window_grid², C): non-overlapping windows of the token grid."""
        batch, _, channels = tokens.shape
        w = self.window_grid
        x = tokens.view(batch, grid[0] // w, w, grid[1] // w, w, channels).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, w * w, channels)

    def _unwindow(self, windows: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        w = self.window_grid
        channels = windows.shape[-1]
        x = windows.view(-1, grid[0] // w, grid[1] // w, w, w, channels).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(-1, grid[0] * grid[1], channels)


# published name prefix -> ours; keys under IGNORED are the classifier parts SimpleClick never runs
RENAMES = (
    ("patch_embed_coords.proj.", "click_embed."),
    ("backbone.", "vit."),
    ("head.convs.", "head.project."),
    ("head.fusion_conv.conv.", "head.fuse."),
    ("head.conv_seg.", "head.classifier."),
    ("neck.", "neck."),
)
IGNORED = ("backbone.fc_norm.", "backbone.head.", "head.up_conv1.", "head.up_conv2.")


def map_published(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SimpleClick's checkpoint keys renamed to SimpleClickNet's (`head.convs.0.conv.weight` ->
    `head.project.0.weight`, `backbone.blocks.*` -> `vit.blocks.*`); unknown keys are kept as they are so that
    loading reports them."""
    mapped = {}
    for key, value in state.items():
        if key.startswith(IGNORED):
            continue
        for theirs, ours in RENAMES:
            if key.startswith(theirs):
                key = ours + key[len(theirs) :]
                if ours == "head.project.":
                    key = key.replace(".conv.", ".", 1)
                break
        mapped[key] = value
    return mapped
