"""The residual Swin transformer (WeakREST Sec. III-C2): residual tokens → linear embedding → Swin blocks
(W-MSA / SW-MSA alternating) → per-token logit. Knows nothing of files or configs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.vision_transformer import Block
from torch import nn


def residual_tokens(residuals: torch.Tensor, thetas: tuple[float, ...]) -> torch.Tensor:
    """|r|^θ for each θ concatenated and average-pooled back to d (Sec. III-F): (B, h, w, d) → (B, h, w, d)."""
    magnitude = residuals.abs()
    if len(thetas) == 1:
        return magnitude ** thetas[0]
    stacked = torch.cat([magnitude**theta for theta in thetas], dim=-1)
    shape = stacked.shape
    pooled = F.adaptive_avg_pool1d(stacked.reshape(-1, 1, shape[-1]), residuals.shape[-1])
    return pooled.reshape(*shape[:-1], residuals.shape[-1])


class ResidualTransformer(nn.Module):
    """Per-token anomaly logits (B, h, w) of residual tokens (B, h, w, d).

    `blocks`: `swin` (timm Swin blocks, shifted every second block), `vit` (global-attention ViT blocks, Table IX),
    `conv` (residual 3×3 conv blocks: Table IX's DeSTSeg-style segmentation head, our reading: the paper gives no
    details) or `none` (the per-token linear classifier of Table VIII's first row).
    """

    def __init__(
        self, in_dims: int, embed_dims: int, depth: int, heads: int, window: int, grid: tuple[int, int],
        blocks: str = "swin", mlp_ratio: float = 4.0,
    ):  # fmt: skip
        super().__init__()
        self.embed = nn.Linear(in_dims, embed_dims)
        self.kind = blocks
        if blocks == "swin":
            self.blocks = nn.ModuleList(
                SwinTransformerBlock(
                    embed_dims,
                    grid,
                    num_heads=heads,
                    window_size=window,
                    shift_size=0 if i % 2 == 0 else window // 2,
                    mlp_ratio=mlp_ratio,
                    dynamic_mask=True,
                )
                for i in range(depth)
            )
        elif blocks == "vit":
            self.blocks = nn.ModuleList(Block(embed_dims, heads, mlp_ratio=mlp_ratio) for _ in range(depth))
        elif blocks == "conv":  # Table IX "DeSTSeg": a convolutional segmentation head on the token grid
            self.blocks = nn.ModuleList(
                nn.Sequential(
                    nn.Conv2d(embed_dims, embed_dims, 3, padding=1), nn.BatchNorm2d(embed_dims), nn.ReLU()
                )
                for _ in range(depth)
            )
        elif blocks == "none":
            self.blocks = nn.ModuleList()
        else:
            raise ValueError(f"unknown token classifier blocks {blocks!r}: use swin, vit, conv or none")
        self.norm = nn.LayerNorm(embed_dims)
        self.head = nn.Linear(embed_dims, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        batch, height, width, dims = x.shape
        for block in self.blocks:
            if self.kind == "vit":
                x = block(x.reshape(batch, height * width, dims)).reshape(batch, height, width, dims)
            elif self.kind == "conv":
                x = x + block(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            else:
                x = block(x)
        return self.head(self.norm(x))[..., 0]
