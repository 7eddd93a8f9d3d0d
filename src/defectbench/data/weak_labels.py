"""Weak labels derived from a binary ground-truth mask: the one place every method gets them from.

Conventions: masks are (H, W) arrays, nonzero = defective. Axis-aligned boxes are int rows `[x1, y1, x2, y2]`
with exclusive `x2`/`y2` (the box covers `mask[y1:y2, x1:x2]`). Connected components use 8-connectivity.
Block-label grids are int8: 1 defective, 0 normal, -1 ignored / unknown.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def image_label(mask: np.ndarray) -> int:
    """1 if any pixel is defective, else 0."""
    return int(np.any(mask))


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    return ndimage.label(np.asarray(mask) != 0, structure=EIGHT_CONNECTED)


def boxes(mask: np.ndarray, jitter: int = 0, rng: np.random.Generator | None = None) -> np.ndarray:
    """Tight axis-aligned box per connected component, (K, 4) int64, components in raster-scan order.

    `jitter` > 0 moves every coordinate by a seeded integer in [-jitter, jitter] (WeakREST Table VII's box
    noise), clipped to the image and kept at least one pixel wide and high."""
    labels, count = _components(mask)
    slices = ndimage.find_objects(labels)
    tight = np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in slices], dtype=np.int64)
    tight = tight.reshape(count, 4)
    if jitter <= 0:
        return tight
    if rng is None:
        raise ValueError(
            "boxes(jitter > 0) needs rng=np.random.default_rng(seed) so the noise is reproducible"
        )
    height, width = labels.shape
    noisy = tight + rng.integers(-jitter, jitter + 1, size=tight.shape)
    x1 = np.clip(noisy[:, 0], 0, width - 1)
    y1 = np.clip(noisy[:, 1], 0, height - 1)
    x2 = np.clip(noisy[:, 2], x1 + 1, width)
    y2 = np.clip(noisy[:, 3], y1 + 1, height)
    return np.stack([x1, y1, x2, y2], axis=1)


def rotated_boxes(mask: np.ndarray) -> np.ndarray:
    """Minimum-area rectangle per connected component (cv2.minAreaRect over the component's pixel centres),
    as (K, 4, 2) float32 corner points (x, y); a one-pixel component gives four equal corners."""
    labels, count = _components(mask)
    corners = np.zeros((count, 4, 2), dtype=np.float32)
    for index, region in enumerate(ndimage.find_objects(labels)):
        rows, cols = np.nonzero(labels[region] == index + 1)
        points = np.stack([cols + region[1].start, rows + region[0].start], axis=1).astype(np.float32)
        corners[index] = cv2.boxPoints(cv2.minAreaRect(points))
    return corners


def box_mask(box_array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask, True inside any of the boxes `[x1, y1, x2, y2]` (exclusive x2, y2)."""
    filled = np.zeros(shape, dtype=bool)
    for x1, y1, x2, y2 in np.asarray(box_array, dtype=np.int64).reshape(-1, 4):
        filled[max(y1, 0) : y2, max(x1, 0) : x2] = True
    return filled


def rotated_box_mask(corners: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask of the filled rotated boxes (corner points in pixel-centre coordinates, edges
    included, so a box from `rotated_boxes` covers its component)."""
    canvas = np.zeros(shape, dtype=np.uint8)
    polygons = [np.round(c).astype(np.int32).reshape(-1, 1, 2) for c in np.asarray(corners).reshape(-1, 4, 2)]
    if polygons:
        cv2.fillPoly(canvas, polygons, 1)
        cv2.polylines(canvas, polygons, isClosed=True, color=1)
    return canvas.astype(bool)


def _block_view(mask: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Defective-pixel and valid-pixel counts per block; the last row/column of blocks may be partial."""
    if block < 1:
        raise ValueError(f"block size must be >= 1, got {block}")
    defective = np.asarray(mask) != 0
    height, width = defective.shape
    rows, cols = -(-height // block), -(-width // block)
    padding = ((0, rows * block - height), (0, cols * block - width))
    padded = np.pad(defective, padding).reshape(rows, block, cols, block)
    valid = np.pad(np.ones_like(defective), padding).reshape(rows, block, cols, block)
    return padded.sum(axis=(1, 3)), valid.sum(axis=(1, 3))


def block_labels(mask: np.ndarray, block: int = 8, eps_pos: float = 0.5, eps_neg: float = 0.1) -> np.ndarray:
    """WeakREST block labels (paper Eq. 15): per block the defective fraction f; f >= eps_pos -> 1,
    f <= eps_neg -> 0, otherwise -1 (ignored). Partial edge blocks use the fraction of their valid pixels.

    The paper writes strict inequalities; non-strict ones agree except at exact equality and let eps_neg = 0 mean
    "clean blocks only"."""
    if not 0.0 <= eps_neg < eps_pos <= 1.0:
        raise ValueError(f"need 0 <= eps_neg < eps_pos <= 1, got eps_neg={eps_neg}, eps_pos={eps_pos}")
    defective, valid = _block_view(mask, block)
    fraction = defective / valid
    labels = np.full(fraction.shape, -1, dtype=np.int8)
    labels[fraction >= eps_pos] = 1
    labels[fraction <= eps_neg] = 0
    return labels


def box_block_labels(filled_boxes: np.ndarray, block: int, outside: float) -> np.ndarray:
    """Block labels from a box mask (`box_mask` / `rotated_box_mask`), WeakREST Sec. III-D1: a block with at least
    the fraction `outside` of its pixels outside every box is normal (0), any other block unknown (-1); no block is
    known defective. Partial edge blocks use the fraction of their valid pixels."""
    if not 0.0 < outside <= 1.0:
        raise ValueError(f"need 0 < outside <= 1 (the fraction of a block outside the boxes), got {outside}")
    inside, valid = _block_view(filled_boxes, block)
    return np.where((valid - inside) / valid >= outside, 0, -1).astype(np.int8)


def image_block_labels(mask: np.ndarray, block: int = 8) -> np.ndarray:
    """Block labels from the image label alone: every block unknown (-1) on a defective image, normal otherwise."""
    inside, _ = _block_view(mask, block)
    return np.full(inside.shape, -image_label(mask), dtype=np.int8)


def dilate(mask: np.ndarray, size: int) -> np.ndarray:
    """Binary dilation with a size x size ones kernel (SegDecNet's label dilation); size <= 1 leaves it as is."""
    binary = (np.asarray(mask) != 0).astype(np.uint8)
    if size <= 1:
        return binary
    return cv2.dilate(binary, np.ones((size, size), dtype=np.uint8))


DT_NORMALISATIONS = ("region", "image")


def segdec_loss_weights(
    mask: np.ndarray, p: float, w_pos: float, normalisation: str = "region"
) -> np.ndarray:
    """SegDecNet per-pixel segmentation-loss weights (paper Eq. 4-5), float32 (H, W).

    A positive pixel gets w_pos * (D / D_max)^p, with D its Euclidean distance to the nearest negative pixel
    (scipy's EDT: a pixel next to a negative one has D = 1) and D_max the largest D within its connected
    ground-truth region (8-connectivity), as the paper's "normalized by the maximum distance value within the
    ground-truth region" says (`normalisation="region"`), or the largest D of the whole image (`"image"`, the
    authors' code; the two agree for one-region masks). Negative pixels weigh 1. A mask without any negative pixel
    weighs w_pos everywhere."""
    if normalisation not in DT_NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {DT_NORMALISATIONS}, got {normalisation!r}")
    positive = np.asarray(mask) != 0
    weights = np.ones(positive.shape, dtype=np.float32)
    if not positive.any():
        return weights
    if positive.all():
        return np.full(positive.shape, w_pos, dtype=np.float32)
    distance = ndimage.distance_transform_edt(positive)
    if normalisation == "image":
        weights[positive] = w_pos * (distance[positive] / distance.max()) ** p
        return weights
    regions, count = ndimage.label(positive, structure=EIGHT_CONNECTED)
    region_max = np.concatenate([[1.0], ndimage.maximum(distance, regions, index=np.arange(1, count + 1))])
    relative = distance[positive] / region_max[regions[positive]]
    weights[positive] = w_pos * relative**p
    return weights
