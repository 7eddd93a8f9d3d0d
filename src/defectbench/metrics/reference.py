"""Slow, obviously-correct reference implementations, used only by tests/test_metrics.py and
bench/bench_metrics.py to check and time the vectorised metrics. Not for production use: O(thresholds × pixels).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def reference_regions(masks: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(image index, boolean region mask) for every 8-connected component of every mask."""
    regions = []
    for index, mask in enumerate(np.asarray(masks) != 0):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        regions.extend((index, labelled == region) for region in range(1, count + 1))
    return regions


def reference_pro_curve(
    maps: np.ndarray, masks: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at each threshold (decision `map >= t`), computed directly per threshold and per region."""
    maps = np.asarray(maps, dtype=np.float64)
    normal = np.asarray(masks) == 0
    regions = reference_regions(masks)
    fprs, pros = [], []
    for threshold in thresholds:
        predicted = maps >= threshold
        fprs.append(np.count_nonzero(predicted & normal) / np.count_nonzero(normal))
        overlaps = [
            np.count_nonzero(predicted[index] & region) / np.count_nonzero(region)
            for index, region in regions
        ]
        pros.append(float(np.mean(overlaps)))
    return np.asarray(fprs), np.asarray(pros)


def reference_pro_auc(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """PRO integral by a sweep over every distinct map value: curve from (0, 0), trapezoids, linear
    interpolation at fpr_limit, divided by fpr_limit."""
    thresholds = np.unique(np.asarray(maps, dtype=np.float64))[::-1]
    fpr, pro = reference_pro_curve(maps, masks, thresholds)
    fpr = np.concatenate(([0.0], fpr))
    pro = np.concatenate(([0.0], pro))
    keep = fpr <= fpr_limit
    area = float(np.sum(np.diff(fpr[keep]) * (pro[keep][1:] + pro[keep][:-1]) / 2))
    if not keep.all():
        last = int(np.count_nonzero(keep)) - 1
        pro_at_limit = np.interp(fpr_limit, fpr[last : last + 2], pro[last : last + 2])
        area += (fpr_limit - fpr[last]) * (pro[last] + pro_at_limit) / 2
    return area / fpr_limit
