"""Box-level AP for datasets annotated with boxes only (RDD2020/2022; RFL+RIS supplement, section 2).

Each ground-truth box is a positive scored by the maximum of the map inside it; each image contributes one
negative scored by the maximum of the map outside all its boxes ("the maximum score outside the correct bounding
box ... for false detection evaluation"). The maps are class-agnostic, so the outside region excludes the boxes
of every class and the negatives are shared: the AP of class c ranks the class-c boxes against the negatives of
all images (images without boxes included). An image whose boxes cover the whole map has no negative.
`box_ap` is the mean of the per-class APs (mAP).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from defectbench.metrics.ranking import average_precision
from defectbench.metrics.sweep import float_scores, warn_undefined

Box = Sequence[float | str]
"""(x1, y1, x2, y2, class) in map pixel coordinates; covers columns floor(x1) … ceil(x2) - 1 (at least one)."""


def scale_boxes(
    boxes: Sequence[Box], image_size: tuple[int, int], map_size: tuple[int, int]
) -> list[tuple[float, float, float, float, str]]:
    """Boxes in an image of `image_size` = (H, W) moved to the pixel coordinates of a map of `map_size`."""
    sy, sx = map_size[0] / image_size[0], map_size[1] / image_size[1]
    return [(x1 * sx, y1 * sy, x2 * sx, y2 * sy, cls) for x1, y1, x2, y2, cls in boxes]


def _pixel_span(low: float, high: float, length: int, what: str) -> slice:
    start = max(0, math.floor(low))
    stop = min(length, max(math.ceil(high), math.floor(low) + 1))
    if start >= stop:
        raise ValueError(f"box {what} range [{low}, {high}) lies outside the map (size {length})")
    return slice(start, stop)


def box_scores(
    maps: np.ndarray, boxes_per_image: Sequence[Sequence[Box]]
) -> tuple[list[tuple[str, float]], np.ndarray]:
    """([(class, max inside box) per box], [max outside all boxes per image that has outside pixels])."""
    maps = float_scores(maps, "maps")
    if maps.ndim != 3 or maps.shape[0] != len(boxes_per_image):
        raise ValueError(f"maps {maps.shape} must be (images, H, W) with one box list per image")
    positives: list[tuple[str, float]] = []
    negatives: list[float] = []
    height, width = maps.shape[1:]
    for score_map, boxes in zip(maps, boxes_per_image, strict=True):
        outside = np.ones((height, width), dtype=bool)
        for box in boxes:
            if len(box) != 5:
                raise ValueError(f"a box must be (x1, y1, x2, y2, class), got {box!r}")
            x1, y1, x2, y2, label = box
            rows = _pixel_span(float(y1), float(y2), height, "y")
            cols = _pixel_span(float(x1), float(x2), width, "x")
            positives.append((str(label), float(score_map[rows, cols].max())))
            outside[rows, cols] = False
        if outside.any():
            negatives.append(float(score_map[outside].max()))
    return positives, np.asarray(negatives, dtype=np.float64)


def box_ap_per_class(
    maps: np.ndarray, boxes_per_image: Sequence[Sequence[Box]], classes: Sequence[str] | None = None
) -> dict[str, float]:
    """AP per damage class; `classes` fixes the classes and their order (default: those in the boxes, sorted).
    A requested class without any box is NaN with a MetricWarning."""
    positives, negatives = box_scores(maps, boxes_per_image)
    names = sorted({label for label, _ in positives}) if classes is None else [str(c) for c in classes]
    result: dict[str, float] = {}
    for name in names:
        class_scores = np.asarray([score for label, score in positives if label == name], dtype=np.float64)
        if class_scores.size == 0:
            result[name] = warn_undefined(f"box AP of class {name!r}", "no ground-truth box of that class")
            continue
        labels = np.concatenate([np.ones(class_scores.size, bool), np.zeros(negatives.size, bool)])
        result[name] = average_precision(labels, np.concatenate([class_scores, negatives]))
    return result


def box_ap(
    maps: np.ndarray, boxes_per_image: Sequence[Sequence[Box]], classes: Sequence[str] | None = None
) -> float:
    """Mean over damage classes of the box AP (NaN classes excluded; NaN if none is defined)."""
    return mean_box_ap(box_ap_per_class(maps, boxes_per_image, classes))


def mean_box_ap(per_class: dict[str, float]) -> float:
    defined = [value for value in per_class.values() if not math.isnan(value)]
    if not defined:
        return warn_undefined("box AP", "no class with ground-truth boxes")
    return float(np.mean(defined))
