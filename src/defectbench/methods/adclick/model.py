"""ADClick's network (Sec. 3.1-3.3, Fig. 2): residual tokens + click-map embedding, pixel-word attention with the
defect prompt's word features, a Swin stage, and a per-token head; the network knows nothing of files or clicks'
origin."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerStage
from torch import nn

from defectbench.metrics.clicks import Click


def click_maps(clicks: Sequence[Click], shape: tuple[int, int], radius: int) -> torch.Tensor:
    """(2, H, W) binary disks of radius `radius` around the positive (channel 0) and negative (1) clicks."""
    maps = torch.zeros(2, *shape)
    if not clicks:
        return maps
    ys = torch.arange(shape[0]).view(-1, 1, 1)
    xs = torch.arange(shape[1]).view(1, -1, 1)
    centres = torch.tensor([[c.y, c.x] for c in clicks])
    inside = (ys - centres[:, 0]) ** 2 + (xs - centres[:, 1]) ** 2 <= radius**2  # (H, W, clicks)
    positive = torch.tensor([c.positive for c in clicks])
    maps[0] = inside[..., positive].any(dim=-1).float()
    maps[1] = inside[..., ~positive].any(dim=-1).float()
    return maps


class PixelWordAttention(nn.Module):
    """LAVT's pixel-word attention module with its language gate: each residual token attends over the prompt's
    words; the attended language feature multiplies the token's projection; a tanh gate adds it back."""

    def __init__(self, dim: int, lang_dim: int, heads: int):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, kdim=lang_dim, vdim=lang_dim, batch_first=True)
        self.vision = nn.Sequential(nn.Linear(dim, dim), nn.GELU())
        self.fuse = nn.Sequential(nn.Linear(dim, dim), nn.GELU())
        self.gate = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.Tanh())

    def forward(self, tokens: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, C), words (B, L, C_l), word_mask (B, L) 1 = real word -> tokens (B, N, C)."""
        attended, _ = self.attention(
            tokens, words, words, key_padding_mask=word_mask < 0.5, need_weights=False
        )
        fused = self.fuse(self.vision(tokens) * attended)
        return tokens + self.gate(fused) * fused


class ADClickNet(nn.Module):
    """Residual Swin with click maps and the previous mask (Fig. 2); `lang_dim` None = no language branch;
    `mlp_head` False = a per-token linear classifier (ADClick-Seg abandons the MLP segmentation head)."""

    def __init__(
        self,
        residual_channels: int,
        dim: int,
        depth: int,
        heads: int,
        window: int,
        stride: int,
        lang_dim: int | None,
        mlp_head: bool = True,
    ):
        super().__init__()
        self.stride = stride
        self.residual_embed = nn.Conv2d(residual_channels, dim, kernel_size=1)
        # clicks (2 disks) and the previous mask, patch-embedded to the residual grid (SimpleClick's click embedding)
        self.click_embed = nn.Conv2d(3, dim, kernel_size=stride, stride=stride)
        self.language = PixelWordAttention(dim, lang_dim, heads) if lang_dim else None
        self.swin = SwinTransformerStage(
            dim,
            dim,
            (16, 16),
            depth,
            downsample=False,
            num_heads=heads,
            window_size=window,
            dynamic_mask=True,
        )
        self.norm = nn.LayerNorm(dim)
        self.head = (
            nn.Sequential(nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, 1))
            if mlp_head
            else nn.Linear(dim, 1)
        )

    def forward(
        self,
        residual: torch.Tensor,
        clicks: torch.Tensor,
        previous: torch.Tensor,
        words: torch.Tensor | None = None,
        word_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """residual (B, C, h, w) at 1/stride of the image; clicks (B, 2, H, W); previous (B, 1, H, W) in [0, 1];
        words (B, L, C_l) -> logits (B, 1, H, W)."""
        size = clicks.shape[-2:]
        grid = (size[0] // self.stride, size[1] // self.stride)
        if residual.shape[-2:] != grid:
            residual = F.interpolate(residual, size=grid, mode="bilinear", align_corners=False)
        tokens = self.residual_embed(residual) + self.click_embed(torch.cat([clicks, previous], dim=1))
        tokens = tokens.permute(0, 2, 3, 1)  # (B, h, w, C)
        if self.language is not None:
            if words is None or word_mask is None:
                raise ValueError(
                    "this ADClick network has a language branch: give the prompt's word features"
                )
            batch, height, width, channels = tokens.shape
            flat = self.language(tokens.reshape(batch, -1, channels), words, word_mask)
            tokens = flat.reshape(batch, height, width, channels)
        logits = self.head(self.norm(self.swin(tokens))).permute(0, 3, 1, 2)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
