"""One entry point computing the requested metrics by their project names (docs/DEVELOPING.md)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

from defectbench.metrics.boxes import Box, box_ap_per_class, mean_box_ap
from defectbench.metrics.ranking import auroc, detection_scores, pixel_auroc_ap, pro_auc
from defectbench.metrics.segmentation import ThresholdRule, segmentation_scores, threshold_maps
from defectbench.metrics.sweep import DEFAULT_CHUNK_PIXELS

IMAGE_METRICS = ("i_auroc", "i_ap", "auc", "ca", "macc")
IMAGE_COUNT_METRICS = ("fp", "fn")  # image counts at the best-F1 threshold, not fractions
# pixel confusion counts of the thresholded maps: what a `pooled` table cell sums over units (RA-CAM's KSDD folds)
PIXEL_COUNT_METRICS = ("px_tp", "px_fp", "px_fn", "px_tn")
COUNT_METRICS = (*IMAGE_COUNT_METRICS, *PIXEL_COUNT_METRICS)
PIXEL_METRICS = ("p_auroc", "p_ap", "pro")
SEGMENTATION_METRICS = ("iou", "miou", "precision", "recall")
EXTERNAL_METRICS = ("noc85", "noc90", "latency_ms")
METRICS = (*IMAGE_METRICS, *COUNT_METRICS, *PIXEL_METRICS, *SEGMENTATION_METRICS, "f1", "box_ap")
THRESHOLDED = (*SEGMENTATION_METRICS, *PIXEL_COUNT_METRICS)  # computed from the thresholded maps
DEFAULT_METRICS = ("i_auroc", "i_ap", "p_auroc", "p_ap", "pro")  # an experiment without `metrics:`


def needs_masks(metrics: Iterable[str], f1_level: str = "image") -> bool:
    """Whether the metrics compare maps with ground-truth masks (so evaluation must read them)."""
    requested = set(metrics)
    return bool(requested & {*PIXEL_METRICS, *SEGMENTATION_METRICS}) or (
        "f1" in requested and f1_level == "pixel"
    )


def evaluate(
    scores: np.ndarray,
    labels: np.ndarray,
    maps: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    metrics: Iterable[str] = ("i_auroc", "i_ap"),
    *,
    boxes: Sequence[Sequence[Box]] | None = None,
    box_classes: Sequence[str] | None = None,
    threshold: ThresholdRule = "otsu",
    f1_level: Literal["image", "pixel"] = "image",
    fpr_limit: float = 0.3,
    chunk_pixels: int = DEFAULT_CHUNK_PIXELS,
) -> dict[str, float]:
    """Metrics named in `metrics`, values in [0, 1] except the counts fp/fn (NaN where undefined).

    `fp` / `fn` count normal images scored at or above / defective images below the best-F1 image threshold,
    the threshold of ca, macc and f1 (SegDecNet's Table 4). `f1` is the best image-level F1 (SegDecNet's DAGM
    table) with f1_level="image", or the segmentation F1 of
    the thresholded maps (RA-CAM) with f1_level="pixel". Segmentation metrics threshold `maps` with `threshold`
    (a number, "otsu" per image, or "best_f1"). `box_ap` also adds `box_ap:<class>` for every damage class, and
    with boxes given `i_auroc` adds `i_auroc:<class>`: the images showing a class-c box against the images without
    any box (images with other classes only left out), the per-class I-AUROC of RFL+RIS Tables 5-6.
    noc85/noc90/latency_ms are measured by the interactive and timing code, not here.
    """
    requested = list(dict.fromkeys(metrics))
    for name in requested:
        if name in EXTERNAL_METRICS:
            raise ValueError(f"metric {name!r} is measured during prediction, not computed by evaluate()")
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    if f1_level not in ("image", "pixel"):
        raise ValueError(f"f1_level must be 'image' or 'pixel', got {f1_level!r}")
    pixel_f1 = "f1" in requested and f1_level == "pixel"
    needs_maps = set(requested) & {*PIXEL_METRICS, *THRESHOLDED, "box_ap"} or pixel_f1
    if needs_maps and maps is None:
        raise ValueError(f"metrics {requested} need anomaly maps")
    if (set(requested) & {*PIXEL_METRICS, *THRESHOLDED} or pixel_f1) and masks is None:
        raise ValueError(f"metrics {requested} need ground-truth masks")
    results: dict[str, float] = {}

    image_names = {"i_auroc": "auc", "i_ap": "ap", "auc": "auc", "ca": "ca", "macc": "macc", "f1": "f1"}
    image_names |= {name: name for name in IMAGE_COUNT_METRICS}
    image_requested = [
        n for n in requested if n in IMAGE_METRICS or n in IMAGE_COUNT_METRICS or (n == "f1" and not pixel_f1)
    ]
    if image_requested:
        detection = detection_scores(labels, scores)
        results.update({name: detection[image_names[name]] for name in image_requested})
    if {"p_auroc", "p_ap"} & set(requested):
        results["p_auroc"], results["p_ap"] = pixel_auroc_ap(maps, masks, chunk_pixels)
    if "pro" in requested:
        results["pro"] = pro_auc(maps, masks, fpr_limit, chunk_pixels)
    if set(requested) & set(THRESHOLDED) or pixel_f1:
        segmentation = segmentation_scores(threshold_maps(maps, threshold, masks, chunk_pixels), masks)
        segmentation_names = (*THRESHOLDED, "f1") if pixel_f1 else THRESHOLDED
        results.update({name: segmentation[name] for name in segmentation_names if name in requested})
    if "box_ap" in requested:
        if boxes is None:
            raise ValueError("box_ap needs the ground-truth boxes of every image")
        per_class = box_ap_per_class(maps, boxes, box_classes)
        results["box_ap"] = mean_box_ap(per_class)
        results.update({f"box_ap:{name}": value for name, value in per_class.items()})
    if "i_auroc" in requested and boxes is not None:
        results.update(_per_class_auroc(scores, boxes, box_classes))
    return {name: results[name] for name in requested} | {
        name: value for name, value in results.items() if name.startswith(("box_ap:", "i_auroc:"))
    }


def _per_class_auroc(
    scores: np.ndarray, boxes: Sequence[Sequence[Box]], classes: Sequence[str] | None
) -> dict[str, float]:
    """`i_auroc:<class>`: images with a box of the class (positives) against images without any box."""
    present = [{str(box[4]) for box in image_boxes} for image_boxes in boxes]
    names = sorted(set().union(*present)) if classes is None else [str(c) for c in classes]
    normal = np.array([not p for p in present])
    result = {}
    for name in names:
        positive = np.array([name in p for p in present])
        keep = positive | normal
        result[f"i_auroc:{name}"] = auroc(positive[keep], np.asarray(scores)[keep])
    return result
