"""Normalised focal loss (Sofiiuk et al., AdaptIS; RITM's NormalizedFocalLossSigmoid), used by ADClick (Sec. 3.4)."""

from __future__ import annotations

import torch

EPS = 1e-8


def normalized_focal_loss(
    logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.5, gamma: float = 2.0
) -> torch.Tensor:
    """Mean NFL over a batch; logits (B, 1, H, W), labels (B, 1, H, W) in {0, 1} or -1 = ignored (no loss).

    The focal weights (1 - p_t)^gamma of each image are rescaled to sum to its number of labelled pixels (the
    normaliser is detached, as in RITM), so the loss does not vanish as the prediction improves.
    """
    valid = (labels >= 0).float()
    positive = labels > 0.5
    probs = torch.sigmoid(logits)
    p_t = torch.where(positive, probs, 1 - probs)
    alpha_t = torch.where(positive, torch.full_like(probs, alpha), torch.full_like(probs, 1 - alpha))
    beta = (1 - p_t) ** gamma * valid
    dims = tuple(range(1, logits.dim()))
    scale = (valid.sum(dim=dims, keepdim=True) / (beta.sum(dim=dims, keepdim=True) + EPS)).detach()
    loss = -alpha_t * beta * scale * torch.log(torch.clamp(p_t + EPS, max=1.0))
    per_image = (loss * valid).sum(dim=dims) / (valid.sum(dim=dims) + EPS)
    return per_image.mean()
