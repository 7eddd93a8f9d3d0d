"""Filtering-guided backpropagation (FGBP, RA-CAM paper Eq. 5) as a plug-in for any network's (leaky) ReLUs.

Eq. 5 keeps, at every rectifier, only the incoming gradients above δ: R^l = (A > 0) · (R^{l+1} ≥ δ) · R^{l+1}.
δ is either an absolute value (`threshold`) or, as the paper sets it for RA-CAM (Eq. 6), the given percentile of
the positive gradient values of each feature map (`percentile`, one δ per sample and channel). We compare with
`≥` (Eq. 6) rather than Eq. 5's `>`: they differ only at equality, where `>` would erase a spatially constant
gradient map (e.g. the one a global-average-pooling head sends back) whose percentile equals its value.
For a leaky ReLU the indicator (A > 0) becomes the leaky derivative (1 or the negative slope).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F


def percentile_of_positives(grad: torch.Tensor, percentile: float) -> torch.Tensor:
    """Per-feature-map δ: the `percentile` (0–100, linear interpolation as numpy's default) of the positive
    values of each (sample, channel) map of `grad` (N, C, ...); +inf where a map has no positive value.
    Returns shape (N, C, 1, ..., 1) so it broadcasts against `grad`. A 2-D `grad` counts each row as one map."""
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
    rows = grad.reshape(grad.shape[0], grad.shape[1] if grad.ndim >= 3 else 1, -1)
    positive = rows > 0
    count = positive.sum(dim=-1, keepdim=True)
    ascending = torch.where(positive, rows, torch.full_like(rows, torch.inf)).sort(dim=-1).values
    rank = (count - 1).clamp(min=0).to(rows.dtype) * (percentile / 100.0)
    lower = rank.floor().long()
    upper = rank.ceil().long()
    low_value = ascending.gather(-1, lower)
    high_value = ascending.gather(-1, upper)
    interpolated = low_value + (high_value - low_value) * (rank - lower.to(rows.dtype))
    delta = torch.where(count > 0, interpolated, torch.full_like(interpolated, torch.inf))
    return delta.reshape(*rows.shape[:2], *([1] * max(0, grad.ndim - 2))) if grad.ndim >= 3 else delta[:, 0]


def filter_gradient(
    grad: torch.Tensor, *, threshold: float | None = None, percentile: float | None = None
) -> torch.Tensor:
    """𝕀(grad ≥ δ) ⊗ grad with δ = `threshold`, or δ = the `percentile` of each feature map's positive values."""
    if (threshold is None) == (percentile is None):
        raise ValueError("give exactly one of threshold (absolute δ) and percentile (δ per feature map)")
    delta = torch.as_tensor(threshold, dtype=grad.dtype) if percentile is None else None
    if delta is None:
        delta = percentile_of_positives(grad, percentile)
    return torch.where(grad >= delta, grad, torch.zeros_like(grad))


class _FilteredRectifier(torch.autograd.Function):
    """Leaky ReLU forward; Eq. 5 backward (leaky derivative times the filtered incoming gradient)."""

    @staticmethod
    def forward(ctx, x, slope: float, threshold: float | None, percentile: float | None):  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.slope, ctx.threshold, ctx.percentile = slope, threshold, percentile
        return F.leaky_relu(x, slope) if slope else F.relu(x)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        local = torch.where(x > 0, torch.ones_like(x), torch.full_like(x, ctx.slope))
        filtered = filter_gradient(grad_output, threshold=ctx.threshold, percentile=ctx.percentile)
        return local * filtered, None, None, None


def _filtered_forward(
    x: torch.Tensor, *, slope: float, threshold: float | None, percentile: float | None
) -> torch.Tensor:
    return _FilteredRectifier.apply(x, slope, threshold, percentile)


@contextmanager
def filtering_guided_backprop(
    model: nn.Module, *, threshold: float | None = None, percentile: float | None = None
) -> Iterator[nn.Module]:
    """Within the block, every nn.ReLU / nn.LeakyReLU module of `model` back-propagates with FGBP (Eq. 5).

    Works on any network built from rectifier modules (incl. the models handed to pytorch_grad_cam); rectifiers
    called functionally (F.relu inside a forward) are not reached. The forward values are unchanged, and the
    original forwards are restored on exit, also after an exception.
    """
    filter_gradient(
        torch.ones(1, 1, 1), threshold=threshold, percentile=percentile
    )  # validates the arguments
    patched: list[nn.Module] = []
    try:
        for module in model.modules():
            if isinstance(module, nn.ReLU | nn.LeakyReLU):
                slope = float(module.negative_slope) if isinstance(module, nn.LeakyReLU) else 0.0
                module.forward = functools.partial(
                    _filtered_forward, slope=slope, threshold=threshold, percentile=percentile
                )
                patched.append(module)
        yield model
    finally:
        for module in patched:
            del module.forward
