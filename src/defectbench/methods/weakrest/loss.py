"""WeakREST's losses: class-normalised focal loss (Eq. 17), randomly masked residuals (Eq. 18) and ResMixMatch
(Algorithm 1). Token labels: 1 defective, 0 normal, IGNORE (Eq. 15's ∅ of a labelled image), UNKNOWN (a block of
a weakly-labelled image inside a box or on an image-level positive: ResMixMatch guesses its label)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

IGNORE = -1
UNKNOWN = -2


def focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, use: torch.Tensor, alpha: float, gamma: float
) -> torch.Tensor:
    """Eq. 17 over the tokens `use`: positives (target > 0.5, Algorithm 1's Z⁺) and negatives (Z⁻) each averaged
    over their own class, so that the rare defective blocks weigh as much as the normal ones."""
    p = torch.sigmoid(logits[use])
    positive = targets[use] > 0.5
    loss = logits.new_zeros(())
    if (~positive).any():
        loss = loss - ((1 - alpha) * p[~positive] ** gamma * F.logsigmoid(-logits[use][~positive])).mean()
    if positive.any():
        loss = loss - (alpha * (1 - p[positive]) ** gamma * F.logsigmoid(logits[use][positive])).mean()
    return loss


def random_mask(tokens: torch.Tensor, beta: float, kappa: float, generator: torch.Generator) -> torch.Tensor:
    """Eq. 18: each token zeroed with probability β, else jittered by Gaussian noise of κ times its own norm."""
    tau = torch.rand(tokens.shape[:-1], generator=generator, device=tokens.device)
    noise = torch.randn(tokens.shape, generator=generator, device=tokens.device)
    scale = kappa * tokens.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    jittered = tokens + scale * noise
    return torch.where((tau <= beta)[..., None], torch.zeros_like(tokens), jittered)


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """MixMatch's sharpening of a binary probability."""
    a, b = p ** (1 / temperature), (1 - p) ** (1 / temperature)
    return a / (a + b).clamp_min(1e-12)


def token_mixup(
    tokens: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, mix: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1, steps 5-6: W = Shuffle(Union(X, U)) over the batch's tokens, and each token mixed with its
    partner in W at weight `mix` (≥ 0.5: the token stays dominant at its own position); ignored tokens are
    neither mixed nor partners."""
    flat_labels = labels.reshape(-1)
    usable = torch.nonzero(flat_labels != IGNORE)[:, 0]
    partner = torch.arange(len(flat_labels), device=tokens.device)
    partner[usable] = usable[torch.randperm(len(usable), generator=generator).to(tokens.device)]
    flat_tokens, flat_targets = tokens.reshape(-1, tokens.shape[-1]), targets.reshape(-1)
    mixed_tokens = mix * flat_tokens + (1 - mix) * flat_tokens[partner]
    mixed_targets = mix * flat_targets + (1 - mix) * flat_targets[partner]
    return mixed_tokens.reshape(tokens.shape), mixed_targets.reshape(targets.shape)


def resmixmatch_loss(
    model: Callable[[torch.Tensor], torch.Tensor],
    tokens: torch.Tensor,
    labels: torch.Tensor,
    params: dict,
    lambda_u: float,
    generator: torch.Generator,
    mix: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_x + λ_u L_u of Algorithm 1 for tokens (B, h, w, d) and labels (B, h, w); `mix` ~ Beta(α, α) the mixup
    weight (drawn by the caller from its own seeded generator).

    Without UNKNOWN tokens this is the supervised loss: Eq. 17 on the masked tokens (Eq. 18) of the known ones.
    With them, mixup pairs tokens as Algorithm 1 writes it (`token_mixup`); a mixed token is unknown or known as
    its own token (L_u or L_x).
    """
    beta, kappa = params["mask_probability"], params["jitter"]
    known, unknown = labels >= 0, labels == UNKNOWN
    targets = labels.clamp_min(0).float()
    if not unknown.any():
        logits = model(random_mask(tokens, beta, kappa, generator))
        loss = focal_loss(logits, targets, known, params["focal_alpha"], params["focal_gamma"])
        return loss, {"loss_x": float(loss.detach()), "loss_u": 0.0}
    with torch.no_grad():  # label guessing over A augmentations, sharpened
        guesses = torch.stack(
            [
                torch.sigmoid(model(random_mask(tokens, beta, kappa, generator)))
                for _ in range(params["augmentations"])
            ]
        ).mean(0)
        targets = torch.where(unknown, sharpen(guesses, params["sharpen_temperature"]), targets)
    mixed_tokens, mixed_targets = token_mixup(tokens, targets, labels, max(mix, 1 - mix), generator)
    logits = model(random_mask(mixed_tokens, beta, kappa, generator))
    # Algorithm 1, step 9: Z⁺ / Z⁻ split the mixed labels at 0.5 (focal_loss)
    loss_x = focal_loss(logits, mixed_targets, known, params["focal_alpha"], params["focal_gamma"])
    loss_u = focal_loss(logits, mixed_targets, unknown, params["focal_alpha_u"], params["focal_gamma"])
    return loss_x + lambda_u * loss_u, {"loss_x": float(loss_x.detach()), "loss_u": float(loss_u.detach())}
