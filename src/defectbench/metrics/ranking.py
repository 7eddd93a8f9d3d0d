"""Threshold-free ranking metrics: image- and pixel-level AUROC / AP, PRO, and the DAGM detection metrics.

All are exact: every distinct score is a threshold and ties form one step, as in scikit-learn
(`roc_auc_score`, `average_precision_score`, `precision_recall_curve`), which the tests use as reference.
Argument order follows scikit-learn for image-level functions (labels, scores) and the map-first order of the
evaluation code for pixel-level ones (maps, masks).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy import ndimage

from defectbench.metrics.sweep import (
    DEFAULT_CHUNK_PIXELS,
    Chunk,
    ChunkSource,
    CurveSummary,
    binary_labels,
    float_scores,
    make_sweep,
    summarise,
    warn_undefined,
)

# 8-connectivity within one image, no connection across the stacked image axis.
_EIGHT_CONNECTED_2D = np.zeros((3, 3, 3), dtype=bool)
_EIGHT_CONNECTED_2D[1] = True


def _flat_source(labels: np.ndarray, scores: np.ndarray) -> ChunkSource:
    scores = float_scores(scores).ravel()
    labels = binary_labels(labels).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels ({labels.size}) and scores ({scores.size}) differ in length")
    return ChunkSource(scores.size, scores.dtype, lambda: iter([Chunk(scores, labels)]))


def _check_maps(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(maps)
    masks = np.asarray(masks)
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise ValueError(
            f"maps and masks must both be (images, height, width); got {maps.shape} and {masks.shape}"
        )
    return maps, masks


def _images_per_chunk(maps: np.ndarray, chunk_pixels: int) -> int:
    return max(1, chunk_pixels // max(1, maps.shape[1] * maps.shape[2]))


def _pixel_source(maps: np.ndarray, masks: np.ndarray, chunk_pixels: int) -> ChunkSource:
    maps, masks = _check_maps(maps, masks)
    step = _images_per_chunk(maps, chunk_pixels)

    def chunks() -> Iterator[Chunk]:
        for start in range(0, maps.shape[0], step):
            scores = float_scores(maps[start : start + step], "maps").ravel()
            yield Chunk(scores, binary_labels(masks[start : start + step], "masks").ravel())

    dtype = np.dtype(np.float64) if maps.dtype.kind in "iub" else maps.dtype
    return ChunkSource(maps.size, dtype, chunks)


def _region_source(maps: np.ndarray, masks: np.ndarray, chunk_pixels: int) -> tuple[ChunkSource, int]:
    """Pixels with weight 1/|region| on each ground-truth region (8-connected): summed over the pixels above a
    threshold and divided by the number of regions, that is the mean per-region overlap."""
    maps, masks = _check_maps(maps, masks)
    step = _images_per_chunk(maps, chunk_pixels)

    def chunks() -> Iterator[Chunk]:
        for start in range(0, maps.shape[0], step):
            scores = float_scores(maps[start : start + step], "maps").ravel()
            regions, _ = ndimage.label(
                binary_labels(masks[start : start + step], "masks"), _EIGHT_CONNECTED_2D
            )
            regions = regions.ravel()
            sizes = np.bincount(regions).astype(np.float64)
            sizes[0] = 1.0  # background pixels carry no positive weight; avoids 1/0 when a chunk has none
            yield Chunk(scores, regions > 0, 1.0 / sizes[regions])

    region_count = sum(
        ndimage.label(binary_labels(masks[start : start + step], "masks"), _EIGHT_CONNECTED_2D)[1]
        for start in range(0, maps.shape[0], step)
    )
    dtype = np.dtype(np.float64) if maps.dtype.kind in "iub" else maps.dtype
    return ChunkSource(maps.size, dtype, chunks), region_count


def _summary(source: ChunkSource, chunk_pixels: int, fpr_limit: float | None = None) -> CurveSummary:
    return summarise(make_sweep(source, chunk_pixels), fpr_limit)


def _checked(value: float, metric: str, summary: CurveSummary) -> float:
    if np.isnan(value):
        return warn_undefined(
            metric, f"{summary.total_positive:g} positives and {summary.total_negative:g} negatives"
        )
    return value


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN with a MetricWarning when only one class is present.

    One `np.unique` over all scores: for pixel maps use `p_auroc`, whose memory does not grow with the pixels."""
    summary = _summary(_flat_source(labels, scores), max(1, np.size(scores)))
    return _checked(summary.auroc, "AUROC", summary)


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """scikit-learn's step-wise AP: sum over thresholds of (recall step) × precision; not interpolated."""
    summary = _summary(_flat_source(labels, scores), max(1, np.size(scores)))
    return _checked(summary.average_precision, "AP", summary)


def i_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Image-level AUROC from one score per image."""
    return auroc(labels, scores)


def i_ap(labels: np.ndarray, scores: np.ndarray) -> float:
    """Image-level AP from one score per image."""
    return average_precision(labels, scores)


def pixel_auroc_ap(
    maps: np.ndarray, masks: np.ndarray, chunk_pixels: int = DEFAULT_CHUNK_PIXELS
) -> tuple[float, float]:
    """(P-AUROC, P-AP) over all pixels of all images (normal images included), one pass for both."""
    summary = _summary(_pixel_source(maps, masks, chunk_pixels), chunk_pixels)
    return _checked(summary.auroc, "P-AUROC", summary), _checked(summary.average_precision, "P-AP", summary)


def p_auroc(maps: np.ndarray, masks: np.ndarray, chunk_pixels: int = DEFAULT_CHUNK_PIXELS) -> float:
    """Pixel AUROC over all pixels of all images; maps (images, H, W).

    float16 maps (the predictions contract) take the one-pass 65,536-bin histogram path; float32 the bucketed
    multi-pass path; float64 maps larger than `chunk_pixels` are compared at float32 resolution."""
    summary = _summary(_pixel_source(maps, masks, chunk_pixels), chunk_pixels)
    return _checked(summary.auroc, "P-AUROC", summary)


def p_ap(maps: np.ndarray, masks: np.ndarray, chunk_pixels: int = DEFAULT_CHUNK_PIXELS) -> float:
    """Pixel AP over all pixels of all images; maps (images, H, W)."""
    summary = _summary(_pixel_source(maps, masks, chunk_pixels), chunk_pixels)
    return _checked(summary.average_precision, "P-AP", summary)


def pro_auc(
    maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3, chunk_pixels: int = DEFAULT_CHUNK_PIXELS
) -> float:
    """Normalised area under the PRO curve (MVTec AD definition) up to `fpr_limit`.

    Regions are the 8-connected components of each ground-truth mask; every distinct score is a threshold
    (decision `score >= t`); FPR counts all normal pixels of all images; PRO is the overlap averaged over all
    regions of all images; the curve starts at (0, 0), is integrated with trapezoids, linearly interpolated at
    `fpr_limit`, and divided by `fpr_limit`. Because the mean overlap is linear in the hits, each region pixel
    carries weight 1/|region| and the curve is one weighted cumulative sum over the sorted pixels.
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    source, region_count = _region_source(maps, masks, chunk_pixels)
    if region_count == 0:
        return warn_undefined("PRO", "no ground-truth region in any mask")
    summary = _summary(source, chunk_pixels, fpr_limit)
    return _checked(summary.pro_integral, "PRO", summary)


def detection_scores(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """DAGM / SegDecNet image metrics: ap, auc, f1 (best over thresholds), and at the best-F1 threshold
    (decision `score >= threshold`, as in the authors' evaluation) ca = accuracy, macc = (TPR + TNR) / 2 and
    the image counts fp (normal images at or above it) and fn (defective images below it), SegDecNet's Table 4."""
    summary = _summary(_flat_source(labels, scores), max(1, np.size(scores)))
    positives, negatives = summary.total_positive, summary.total_negative
    if positives == 0 or negatives == 0:
        nan = warn_undefined("detection metrics", f"{positives:g} positives and {negatives:g} negatives")
        return {name: nan for name in ("ap", "auc", "f1", "ca", "macc", "fp", "fn", "threshold")}
    true_negatives = negatives - summary.false_positive_at_best
    return {
        "ap": summary.average_precision,
        "auc": summary.auroc,
        "f1": summary.best_f1,
        "ca": (summary.true_positive_at_best + true_negatives) / (positives + negatives),
        "macc": (summary.true_positive_at_best / positives + true_negatives / negatives) / 2,
        "fp": summary.false_positive_at_best,
        "fn": positives - summary.true_positive_at_best,
        "threshold": summary.best_threshold,
    }


def ap(labels: np.ndarray, scores: np.ndarray) -> float:
    """DAGM table AP (= image-level average precision)."""
    return average_precision(labels, scores)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """DAGM table AUC (= image-level AUROC)."""
    return auroc(labels, scores)


def f1(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best F1 over all image-score thresholds."""
    return detection_scores(labels, scores)["f1"]


def ca(labels: np.ndarray, scores: np.ndarray) -> float:
    """Classification accuracy at the best-F1 threshold."""
    return detection_scores(labels, scores)["ca"]


def macc(labels: np.ndarray, scores: np.ndarray) -> float:
    """(TPR + TNR) / 2 at the best-F1 threshold."""
    return detection_scores(labels, scores)["macc"]


def best_f1_threshold(
    labels: np.ndarray, scores: np.ndarray, chunk_pixels: int = DEFAULT_CHUNK_PIXELS
) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of the decision `scores >= threshold`; any shape (pixel maps too)."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim == 3 and scores.shape == labels.shape:
        source = _pixel_source(scores, labels, chunk_pixels)
    else:
        source = _flat_source(labels, scores)
    summary = _summary(source, chunk_pixels)
    if summary.total_positive == 0:
        return float("nan"), warn_undefined("best F1", "no positive")
    return summary.best_threshold, summary.best_f1
