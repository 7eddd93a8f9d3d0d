"""ADClick as a click model and its iterative training with simulated clicks (Sec. 3.4, RITM/SimpleClick style)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectbench.methods.adclick.language import averaged
from defectbench.methods.adclick.loss import normalized_focal_loss
from defectbench.methods.adclick.model import ADClickNet, click_maps
from defectbench.metrics.clicks import THRESHOLD, Click, Clicker, ClickModel
from defectbench.training import EpochLoop

WordFeatures = Mapping[str, tuple[torch.Tensor, torch.Tensor]]  # defect type -> (prompts, L, C), (prompts, L)


@dataclass(frozen=True)
class ClickItem:
    """One image for the click model: its residual tensor (C, h, w), defect mask (H, W) the clicks are simulated
    on, defect type (None: no prompt, e.g. a synthetic anomaly) and, for pseudo labels, the soft label map (H, W)
    that `tri_valued` turns into the loss's targets (None: the mask is the target)."""

    residual: torch.Tensor
    mask: np.ndarray
    defect: str | None
    soft: np.ndarray | None = None


def tri_valued(soft: np.ndarray, band: tuple[float, float], abandon: float) -> np.ndarray:
    """ADClick-Seg's label map (Eq. 9): 1 above the confident band, 0 below it, -1 (no loss) inside; the band
    widens by `abandon` (drawn anew every step: random label abandon)."""
    labels = np.full(soft.shape, -1.0, np.float32)
    labels[soft >= band[1] + abandon] = 1.0
    labels[soft <= band[0] - abandon] = 0.0
    return labels


def empty_prompt(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The word features of 'no prompt': one zero word (synthetic anomalies have no defect type to describe)."""
    return torch.zeros(1, dim), torch.ones(1)


class ADClickClickModel(ClickModel):
    """The trained network behind the click protocol: inference uses the averaged prompt features (Eq. 6)."""

    def __init__(
        self, net: ADClickNet, device: torch.device, words: WordFeatures | None, radius: int, dim: int
    ):
        self.net = net.to(device).eval()
        self.device = device
        self.words = words
        self.radius = radius
        self.dim = dim

    def prepare(self, item: ClickItem) -> dict[str, Any]:
        prompt = None
        if self.words is not None:
            prompt = averaged(self.words[item.defect]) if item.defect is not None else empty_prompt(self.dim)
            prompt = tuple(p[None].to(self.device) for p in prompt)
        return {"residual": item.residual[None].to(self.device), "prompt": prompt}

    def predict(self, prepared: dict[str, Any], clicks: list[Click], previous: np.ndarray) -> np.ndarray:
        maps = click_maps(clicks, previous.shape, self.radius)[None].to(self.device)
        prev = torch.from_numpy(previous)[None, None].to(self.device)
        words, mask = prepared["prompt"] if prepared["prompt"] is not None else (None, None)
        logits = self.net(prepared["residual"], maps, prev, words, mask)
        return torch.sigmoid(logits)[0, 0].cpu().numpy()


def _prompt_batch(
    items: list[ClickItem], words: WordFeatures | None, dim: int, rng: np.random.Generator
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Training prompts (Sec. 3.3): per item, half the time the averaged features, else one random prompt's."""
    if words is None:
        return None, None
    chosen = []
    for item in items:
        if item.defect is None:
            chosen.append(empty_prompt(dim))
            continue
        features, mask = words[item.defect]
        if rng.random() < 0.5:
            chosen.append(averaged((features, mask)))
        else:
            pick = int(rng.integers(len(features)))
            chosen.append((features[pick], mask[pick]))
    length = max(f.shape[0] for f, _ in chosen)
    feats = torch.zeros(len(chosen), length, dim)
    masks = torch.zeros(len(chosen), length)
    for i, (f, m) in enumerate(chosen):
        feats[i, : f.shape[0]], masks[i, : m.shape[0]] = f, m
    return feats, masks


def fit_click_net(
    net: ADClickNet,
    items: list[ClickItem],
    words: WordFeatures | None,
    params: Mapping[str, Any],
    seed: int,
    device: torch.device,
    checkpoint: Path | None = None,
    desc: str = "adclick",
    provenance: Any = None,
) -> list[dict[str, float]]:
    """Iterative training (RITM): a first click, then 0..max_next_clicks clicks from the network's own errors
    without gradient, then one step of normalised focal loss; AdamW and an exponential moving average.
    `provenance` (state_dict/load_state_dict) is saved in the checkpoint and checks the one resumed from."""
    if not items:
        raise ValueError("ADClick needs defective training images (real or synthetic) with masks")
    net.to(device).train()
    ema = copy.deepcopy(net).requires_grad_(False)
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=float(params["lr"]), weight_decay=float(params["weight_decay"])
    )
    rng = np.random.default_rng(seed)
    batch_size, radius = int(params["batch_size"]), int(params["click_radius"])
    steps = max(1, int(params["samples_per_epoch"]) // batch_size)
    decay = float(params["ema_decay"])
    dim = int(params["lang_dim"]) if words is not None else 0

    def epoch(_: int) -> dict[str, float]:
        losses = []
        for _step in range(steps):
            batch = [items[i] for i in rng.integers(len(items), size=batch_size)]
            losses.append(_train_step(net, optimizer, batch, words, dim, params, rng, radius, device))
            with torch.no_grad():
                for target, source in zip(ema.state_dict().values(), net.state_dict().values(), strict=True):
                    if target.dtype.is_floating_point:
                        target.mul_(decay).add_(source, alpha=1 - decay)
                    else:
                        target.copy_(source)
        return {"loss": float(np.mean(losses))}

    state = {"provenance": provenance} if provenance is not None else {}  # checked first, before any weight
    state |= {"net": net, "ema": ema, "optimizer": optimizer, "rng": rng}
    log = EpochLoop(int(params["epochs"]), checkpoint, desc=desc).run(state, epoch)
    net.load_state_dict(ema.state_dict())
    return log.copy()


def _train_step(
    net: ADClickNet,
    optimizer: torch.optim.Optimizer,
    batch: list[ClickItem],
    words: WordFeatures | None,
    dim: int,
    params: Mapping[str, Any],
    rng: np.random.Generator,
    radius: int,
    device: torch.device,
) -> float:
    shape = batch[0].mask.shape
    clickers = [Clicker(item.mask, "inner", int(rng.integers(2**31))) for item in batch]
    previous = np.zeros((len(batch), *shape), np.float32)
    clicked = rng.random(len(batch)) < float(
        params.get("click_probability", 1.0)
    )  # ADClick-Seg: some get none
    for clicker, first in zip(clickers, clicked, strict=True):
        if first:
            clicker.next_click(np.zeros(shape, bool))
    residual = torch.stack([item.residual for item in batch]).to(device)
    prompt, prompt_mask = _prompt_batch(batch, words, dim, rng)
    prompt = prompt.to(device) if prompt is not None else None
    prompt_mask = prompt_mask.to(device) if prompt_mask is not None else None

    def forward() -> torch.Tensor:
        maps = torch.stack([click_maps(c.clicks, shape, radius) for c in clickers]).to(device)
        points = {"points": [c.clicks for c in clickers]} if getattr(net, "needs_click_points", False) else {}
        return net(
            residual, maps, torch.from_numpy(previous)[:, None].to(device), prompt, prompt_mask, **points
        )

    for _ in range(int(rng.integers(int(params["max_next_clicks"]) + 1))):
        if max(len(c.clicks) for c in clickers) >= int(params["max_clicks_train"]):
            break
        with torch.no_grad():
            net.eval()
            previous = torch.sigmoid(forward())[:, 0].cpu().numpy()
            net.train()
        for clicker, probs, more in zip(clickers, previous, clicked, strict=True):
            if more:
                clicker.next_click(probs > THRESHOLD)
    abandon = float(rng.uniform(0, float(params.get("abandon", 0.0))))
    targets = [
        item.mask.astype(np.float32) if item.soft is None else tri_valued(item.soft, params["band"], abandon)
        for item in batch
    ]
    labels = torch.from_numpy(np.stack(targets))[:, None].to(device)
    loss = normalized_focal_loss(
        forward(), labels, float(params["focal_alpha"]), float(params["focal_gamma"])
    )
    loss = loss + getattr(net, "aux_loss", 0.0)  # a network's own auxiliary term (GPCIS's u-loss)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())
