"""SeCo's pieces (Yang et al., CVPR 2024; zwyang6/SeCo): a ViT student with a momentum teacher, a 1×1 classifier
with global max pooling (and an auxiliary one on layer -3), an ASPP segmentation head, and the losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from defectbench.methods.backbones import create_backbone, imagenet_normalize

IGNORE = 255


class SeCoNet(nn.Module):
    """ViT encoder + classifiers + projection head (decomposition losses) + ASPP segmentation head."""

    def __init__(self, params: dict, seed: int):
        super().__init__()
        kwargs = dict(params.get("vit_kwargs") or {})
        self.vit = create_backbone(
            params["vit"], params["pretrained"], seed=seed, dynamic_img_size=True, **kwargs
        )
        width = self.vit.embed_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.classifier = nn.Conv2d(width, 1, 1, bias=False)
            self.aux_classifier = nn.Conv2d(width, 1, 1, bias=False)
            dim = params["projection_dim"]
            self.projector = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, dim))
            self.segmentation = nn.Sequential(
                ASPP(width, list(params["aspp_rates"]), params["aspp_channels"]),
                nn.Conv2d(params["aspp_channels"], 2, 1),
            )

    def heads(self) -> list[nn.Module]:
        return [self.classifier, self.aux_classifier, self.projector, self.segmentation]

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(final patch tokens as a map (N, D, h, w), layer -3 tokens as a map, class token (N, D))."""
        vit = self.vit
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(imagenet_normalize(images)))))
        outputs = []
        for block in vit.blocks:
            x = block(x)
            outputs.append(x)
        final = vit.norm(outputs[-1])
        grid = (
            images.shape[-2] // vit.patch_embed.patch_size[0],
            images.shape[-1] // vit.patch_embed.patch_size[1],
        )
        prefix = vit.num_prefix_tokens

        def as_map(tokens: torch.Tensor) -> torch.Tensor:
            return tokens[:, prefix:].transpose(1, 2).reshape(tokens.shape[0], -1, *grid)

        return as_map(final), as_map(outputs[-3] if len(outputs) >= 3 else outputs[0]), final[:, 0]


def cam_of(net: SeCoNet, features: torch.Tensor) -> torch.Tensor:
    """ReLU of the classifier's map, normalised by its maximum → (N, h, w) in [0, 1]."""
    cam = F.relu(net.classifier(features))[:, 0]
    return cam / (cam.flatten(1).amax(dim=1).view(-1, 1, 1) + 1e-5)


def pseudo_from_cam(refined: torch.Tensor, labels: torch.Tensor, high: float, low: float) -> torch.Tensor:
    """Defect where the refined CAM > high, background where < low, ignored between; defect-free images are
    background everywhere. refined (N, H, W) → long (N, H, W)."""
    pseudo = torch.full_like(refined, IGNORE, dtype=torch.long)
    pseudo[refined > high] = 1
    pseudo[refined < low] = 0
    pseudo[labels == 0] = 0
    return pseudo


def affinity_loss(features: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
    """Token affinity (cosine → [0, 1]) against the pseudo-label's, pairs with an ignored token left out."""
    tokens = F.normalize(features.flatten(2).transpose(1, 2), dim=-1)
    small = F.interpolate(pseudo[:, None].float(), size=features.shape[-2:], mode="nearest").flatten(1).long()
    affinity = ((tokens @ tokens.transpose(1, 2)) + 1) / 2
    target = (small[:, :, None] == small[:, None, :]).float()
    valid = (small[:, :, None] != IGNORE) & (small[:, None, :] != IGNORE)
    if not valid.any():
        return features.sum() * 0
    return F.binary_cross_entropy(affinity[valid].clamp(1e-6, 1 - 1e-6), target[valid])


def local_contrast(
    student: torch.Tensor,
    labels: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """L_IL: each local crop's student embedding against the teacher's embeddings (queue + batch) — the crops of
    its own label (defect / background) are the positives (supervised InfoNCE)."""
    if student.shape[0] == 0 or bank.shape[0] == 0:
        return student.sum() * 0
    logits = F.normalize(student, dim=-1) @ bank.T / temperature
    positive = (labels[:, None] == bank_labels[None, :]).float()
    has_positive = positive.sum(dim=1) > 0
    if not has_positive.any():
        return student.sum() * 0
    log_probability = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    per_crop = -(log_probability * positive).sum(dim=1) / positive.sum(dim=1).clamp(min=1)
    return per_crop[has_positive].mean()


def global_contrast(
    tokens: torch.Tensor, pseudo: torch.Tensor, prototypes: torch.Tensor, temperature: float
) -> torch.Tensor:
    """L_IG: every student token (projected) against the background and defect prototypes, target its
    pseudo-label (ignored tokens left out). tokens (N, hw, d), pseudo (N, hw), prototypes (2, d)."""
    logits = F.normalize(tokens, dim=-1) @ F.normalize(prototypes, dim=-1).T / temperature
    return F.cross_entropy(logits.reshape(-1, 2), pseudo.reshape(-1), ignore_index=IGNORE)
