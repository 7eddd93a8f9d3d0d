"""Evaluation metrics, exact (every distinct score is a threshold) and vectorised; values in [0, 1] except the
image counts fp/fn."""

from defectbench.metrics.boxes import box_ap, box_ap_per_class, box_scores, scale_boxes
from defectbench.metrics.evaluate import COUNT_METRICS, DEFAULT_METRICS, METRICS, evaluate, needs_masks
from defectbench.metrics.ranking import (
    ap,
    auc,
    auroc,
    average_precision,
    best_f1_threshold,
    ca,
    detection_scores,
    f1,
    i_ap,
    i_auroc,
    macc,
    p_ap,
    p_auroc,
    pixel_auroc_ap,
    pro_auc,
)
from defectbench.metrics.segmentation import (
    otsu_threshold,
    otsu_thresholds_per_image,
    segmentation_scores,
    threshold_maps,
    threshold_rule,
)
from defectbench.metrics.sweep import DEFAULT_CHUNK_PIXELS, MetricWarning

__all__ = [
    "COUNT_METRICS",
    "DEFAULT_CHUNK_PIXELS",
    "DEFAULT_METRICS",
    "METRICS",
    "MetricWarning",
    "ap",
    "auc",
    "auroc",
    "average_precision",
    "best_f1_threshold",
    "box_ap",
    "box_ap_per_class",
    "box_scores",
    "ca",
    "detection_scores",
    "evaluate",
    "f1",
    "i_ap",
    "i_auroc",
    "macc",
    "needs_masks",
    "otsu_threshold",
    "otsu_thresholds_per_image",
    "p_ap",
    "p_auroc",
    "pixel_auroc_ap",
    "pro_auc",
    "scale_boxes",
    "segmentation_scores",
    "threshold_maps",
    "threshold_rule",
]
