"""WeCLIP's pieces (Zhang et al., CVPR 2024; zbf1991/WeCLIP): a frozen CLIP ViT whose per-layer tokens and
head-averaged attention are read out, Grad-CAM against class prompts, the attention-transition CAM refinement,
and the trained decoder."""

from __future__ import annotations

import math

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from defectbench.data import weak_labels
from defectbench.data.images import DataError
from defectbench.methods.backbones import weights_path
from defectbench.methods.refine import min_max

CAM_BOX_THRESHOLD = 0.4  # WeCLIP: the transition is restricted to the boxes around CAM > 0.4
SINKHORN_STEPS = 3  # WeCLIP: one column-then-row normalisation and two more
TRANSITION_LAYERS = 8  # WeCLIP: the attention of the last 8 blocks (of 12) makes the transition


def build_clip(params: dict, seed: int) -> nn.Module:
    """ViT-B/16 CLIP with the local OpenAI weights (pretrained), else a random CLIP of `clip_model` (an open_clip
    architecture name) or of the small `clip_config` the demo gives; frozen, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if params["pretrained"]:
            path = weights_path("clip_vit_b16_openai")
            if not path.exists():
                raise DataError(
                    f"OpenAI CLIP ViT-B/16 weights not found at {path}; place them there (or pretrained: false)"
                )
            model = open_clip.load_openai_model(str(path), device="cpu")
        elif params.get("clip_config"):
            cfg = params["clip_config"]
            model = open_clip.model.CLIP(
                cfg["embed_dim"],
                open_clip.model.CLIPVisionCfg(**cfg["vision"]),
                open_clip.model.CLIPTextCfg(**cfg["text"]),
            )
        else:
            model = open_clip.create_model(params["clip_model"], pretrained=None)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


def clip_normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8-range (N, 3, H, W) → CLIP-normalised."""
    mean = torch.tensor(OPENAI_DATASET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD, device=images.device).view(1, 3, 1, 1)
    return (images / 255.0 - mean) / std


@torch.no_grad()
def text_embeddings(clip: nn.Module, prompts: list[list[str]]) -> torch.Tensor:
    """One L2-normalised embedding per class: the mean of its prompts' embeddings (C, E)."""
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    rows = []
    for class_prompts in prompts:
        embedding = F.normalize(clip.encode_text(tokenizer(class_prompts)), dim=-1).mean(dim=0)
        rows.append(F.normalize(embedding, dim=0))
    return torch.stack(rows)


def _positional(visual: nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    """The positional embedding resized bilinearly to the input's patch grid (WeCLIP)."""
    pos = visual.positional_embedding
    side = math.isqrt(pos.shape[0] - 1)
    patches = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=grid, mode="bilinear", align_corners=False)
    return torch.cat([pos[:1], patches.permute(0, 2, 3, 1).reshape(-1, pos.shape[1])])


def encode_layers(
    clip: nn.Module, images: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor], tuple[int, int]]:
    """Tokens entering every block and after the last but one [(N, 1+hw, D)] and each block's head-averaged
    attention [(N, 1+hw, 1+hw)], for uint8-range images; blocks 1..L-1 run without gradient."""
    visual = clip.visual
    x = visual.conv1(clip_normalize(images))
    grid = tuple(x.shape[-2:])
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + _positional(visual, grid))
    tokens, attentions = [], []
    blocks = list(visual.transformer.resblocks)
    with torch.no_grad():
        for block in blocks[:-1]:
            x, attention = _block(block, x)
            tokens.append(x)
            attentions.append(attention)
    return tokens, attentions, grid


def _block(
    block: nn.Module, x: torch.Tensor, normed: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One residual attention block on x (its ln_1 output may be given, as Grad-CAM's differentiated layer)."""
    y = block.ln_1(x) if normed is None else normed
    out, attention = block.attn(y, y, y, need_weights=True, average_attn_weights=True)
    x = x + block.ls_1(out)
    return x + block.ls_2(block.mlp(block.ln_2(x))), attention


def grad_cam(
    clip: nn.Module, last_input: torch.Tensor, text: torch.Tensor, grid: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM of class 0 (the defect) on the last block's ln_1 output against the class text embeddings, min-max
    normalised as pytorch_grad_cam's; returns (CAM (N, h, w) in [0, 1], the last block's attention)."""
    block = clip.visual.transformer.resblocks[-1]
    x = last_input.detach()
    normed = block.ln_1(x).detach().requires_grad_(True)
    with torch.enable_grad():
        out, attention = _block(block, x, normed)
        pooled = clip.visual.ln_post(out[:, 0]) @ clip.visual.proj
        logits = 100.0 * F.normalize(pooled, dim=-1) @ text.T
        score = logits.softmax(dim=-1)[:, 0].sum()
        (gradient,) = torch.autograd.grad(score, normed)
    weights = gradient[:, 1:].mean(dim=1, keepdim=True)  # (N, 1, D)
    cam = F.relu((weights * normed[:, 1:]).sum(dim=-1)).detach().reshape(-1, *grid)
    return min_max(cam), attention.detach()


def sinkhorn(matrix: torch.Tensor, steps: int = SINKHORN_STEPS) -> torch.Tensor:
    """Alternate column and row normalisation of non-negative (N, L, L) matrices (rows sum to 1 last)."""
    for _ in range(steps):
        matrix = matrix / (matrix.sum(dim=1, keepdim=True) + 1e-8)
        matrix = matrix / (matrix.sum(dim=2, keepdim=True) + 1e-8)
    return matrix


def transition(attentions: list[torch.Tensor]) -> torch.Tensor:
    """WeCLIP's transition matrix (N, hw, hw): the mean patch-to-patch attention of the last TRANSITION_LAYERS
    layers, Sinkhorn-normalised, symmetrised and squared."""
    attention = torch.stack([a[:, 1:, 1:] for a in attentions[-TRANSITION_LAYERS:]]).mean(dim=0)
    matrix = sinkhorn(attention)
    matrix = (matrix + matrix.transpose(1, 2)) / 2
    return matrix @ matrix


def refine_cam(cam: torch.Tensor, attentions: list[torch.Tensor]) -> torch.Tensor:
    """WeCLIP's transition refinement: the CAM inside the boxes around the connected regions of CAM > 0.4
    (8-connected, as its contour boxes) propagated by the transition matrix; output (N, h, w) in [0, 1]."""
    n, h, w = cam.shape
    masks = (cam > CAM_BOX_THRESHOLD).cpu().numpy()
    box = np.stack([weak_labels.box_mask(weak_labels.boxes(m), (h, w)) for m in masks])
    inside = cam.flatten(1) * torch.from_numpy(box).to(cam.device).flatten(1)
    refined = torch.bmm(transition(attentions), inside[..., None])[..., 0]
    return min_max(refined.reshape(n, h, w))


class Decoder(nn.Module):
    """Per-layer MLP (D → dim) of the frozen layers' patch tokens, fused by a 1×1 conv, a transformer over the
    tokens, a 1×1 classifier (2 classes: background, defect)."""

    def __init__(self, width: int, n_layers: int, dim: int, depth: int, heads: int):
        super().__init__()
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(width, dim), nn.GELU(), nn.Linear(dim, dim)) for _ in range(n_layers)
        )
        self.fuse = nn.Conv2d(dim * n_layers, dim, 1)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 4, dropout=0.0, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, depth)
        self.classifier = nn.Conv2d(dim, 2, 1)

    def forward(self, tokens: list[torch.Tensor], grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, 2, h, w), features (N, hw, dim))."""
        parts = [mlp(t[:, 1:]) for mlp, t in zip(self.mlps, tokens, strict=True)]
        x = torch.cat(parts, dim=-1).transpose(1, 2).reshape(parts[0].shape[0], -1, *grid)
        x = self.fuse(x).flatten(2).transpose(1, 2)
        features = self.transformer(x)
        logits = self.classifier(features.transpose(1, 2).reshape(x.shape[0], -1, *grid))
        return logits, features


def affinity_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Decoder token affinity (cosine mapped to [0, 1]) against the pseudo-labels' (same label = 1); (N, hw, d)
    features, (N, hw) labels."""
    normed = F.normalize(features, dim=-1)
    affinity = ((normed @ normed.transpose(1, 2)) + 1) / 2
    target = (labels[:, :, None] == labels[:, None, :]).float()
    return F.binary_cross_entropy(affinity.clamp(1e-6, 1 - 1e-6), target)
