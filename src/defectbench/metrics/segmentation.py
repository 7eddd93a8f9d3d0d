"""Binary segmentation metrics at a threshold (RA-CAM paper, Eq. 8–12) and the threshold rules.

Counts are summed over the whole test set before any ratio is taken (dataset-level, "micro" IoU/F1): the RA-CAM
paper defines IoU = TP / (TP + FP + FN) with TP_c, FP_c, FN_c "for class c" without a per-image average, and its
tables label the F1 column "Micro-F1"; dataset-level counts also keep normal images (empty masks, where a
per-image IoU is undefined) meaningful.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from defectbench.metrics.ranking import best_f1_threshold
from defectbench.metrics.sweep import DEFAULT_CHUNK_PIXELS, binary_labels, float_scores, warn_undefined

_OTSU_IMAGES_PER_BATCH_PIXELS = 1 << 22


def _ratio(numerator: int, denominator: int, metric: str) -> float:
    if denominator == 0:
        return warn_undefined(metric, "zero denominator")
    return numerator / denominator


def segmentation_scores(pred_masks: np.ndarray, gt_masks: np.ndarray) -> dict[str, float]:
    """iou, precision, recall, f1 of the defect class and miou = mean IoU of defect and background, all from
    TP/FP/FN/TN summed over every pixel of every image (see the module docstring), and those counts (px_*). A ratio with a zero
    denominator is NaN with a MetricWarning."""
    pred = binary_labels(pred_masks, "pred_masks")
    gt = binary_labels(gt_masks, "gt_masks")
    if pred.shape != gt.shape:
        raise ValueError(f"pred_masks {pred.shape} and gt_masks {gt.shape} differ in shape")
    true_pos = int(np.count_nonzero(pred & gt))
    false_pos = int(np.count_nonzero(pred)) - true_pos
    false_neg = int(np.count_nonzero(gt)) - true_pos
    true_neg = pred.size - true_pos - false_pos - false_neg
    iou = _ratio(true_pos, true_pos + false_pos + false_neg, "IoU")
    background_iou = _ratio(true_neg, true_neg + false_pos + false_neg, "background IoU")
    precision = _ratio(true_pos, true_pos + false_pos, "precision")
    recall = _ratio(true_pos, true_pos + false_neg, "recall")
    return {
        "iou": iou,
        "miou": (iou + background_iou) / 2,
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * true_pos, 2 * true_pos + false_pos + false_neg, "F1"),
        "px_tp": float(true_pos),
        "px_fp": float(false_pos),
        "px_fn": float(false_neg),
        "px_tn": float(true_neg),
    }


def _otsu_rows(sorted_rows: np.ndarray) -> np.ndarray:
    """Otsu threshold of each row of ascending values: the split maximising between-class variance over every
    split between two distinct values; the threshold is the largest background value (foreground `> t`)."""
    count = sorted_rows.shape[1]
    if count < 2:
        return sorted_rows[:, -1].copy()
    cumulative = np.cumsum(sorted_rows, axis=1)[:, :-1]
    background = np.arange(1, count, dtype=np.float64)
    total = cumulative[:, -1:] + sorted_rows[:, -1:]
    mean_difference = cumulative / background - (total - cumulative) / (count - background)
    between = (background / count) * (1 - background / count) * mean_difference**2
    between[sorted_rows[:, :-1] == sorted_rows[:, 1:]] = -1.0
    split = np.argmax(between, axis=1)
    rows = np.arange(sorted_rows.shape[0])
    no_split = between[rows, split] < 0
    return np.where(no_split, sorted_rows[:, -1], sorted_rows[rows, split])


def otsu_threshold(values: np.ndarray) -> float:
    """Exact Otsu threshold over all distinct values (no histogram binning); foreground is `values > t`
    (OpenCV's convention; on uint8 input it equals cv2's THRESH_OTSU). All-equal input returns that value."""
    values = float_scores(values, "values").ravel().astype(np.float64)
    if values.size == 0:
        raise ValueError("otsu_threshold needs at least one value")
    return float(_otsu_rows(np.sort(values)[None, :])[0])


def otsu_thresholds_per_image(maps: np.ndarray) -> np.ndarray:
    """Otsu threshold of each map of (images, H, W), computed in batches of sorted rows."""
    maps = float_scores(maps, "maps")
    rows = maps.reshape(maps.shape[0], -1)
    step = max(1, _OTSU_IMAGES_PER_BATCH_PIXELS // max(1, rows.shape[1]))
    return np.concatenate(
        [
            _otsu_rows(np.sort(rows[start : start + step].astype(np.float64), axis=1))
            for start in range(0, rows.shape[0], step)
        ]
    )


ThresholdRule = float | Literal["otsu", "best_f1"]


def threshold_rule(spec: str | float) -> ThresholdRule:
    """An experiment's `threshold:` (`otsu`, `best_f1`, `fixed:<v>` or a number) as threshold_maps takes it."""
    if isinstance(spec, int | float):
        return float(spec)
    if spec.startswith("fixed:"):
        return float(spec.removeprefix("fixed:"))
    if spec in ("otsu", "best_f1"):
        return spec
    raise ValueError(f"unknown threshold {spec!r}: use otsu, best_f1 or fixed:<value>")


def threshold_maps(
    maps: np.ndarray,
    rule: ThresholdRule,
    masks: np.ndarray | None = None,
    chunk_pixels: int = DEFAULT_CHUNK_PIXELS,
) -> np.ndarray:
    """Binary masks from anomaly maps: a fixed float t gives `maps >= t`; "otsu" thresholds each map at its own
    Otsu threshold (`> t`, RA-CAM's post-processing); "best_f1" uses the one dataset-level threshold that
    maximises pixel F1 against `masks` (an oracle upper bound, `>= t`)."""
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (images, height, width), got {maps.shape}")
    if rule == "otsu":
        return maps > otsu_thresholds_per_image(maps)[:, None, None]
    if rule == "best_f1":
        if masks is None:
            raise ValueError("the best_f1 threshold rule needs the ground-truth masks")
        threshold, _ = best_f1_threshold(masks, maps, chunk_pixels)
        return maps >= threshold
    if isinstance(rule, str):
        raise ValueError(f"unknown threshold rule {rule!r}; use a number, 'otsu' or 'best_f1'")
    return maps >= rule
