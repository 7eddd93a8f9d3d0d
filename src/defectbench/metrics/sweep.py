"""Exact threshold sweeps: every distinct score is a threshold, ties are one step (as in scikit-learn).

A sweep turns scores with positive/negative labels into per-distinct-score sums (positive weight, negative count),
in descending score order, and `summarise` walks them once with cumulative sums to get AUROC, AP, the best-F1
threshold and the PRO integral.

Three exact paths, chosen by input size and dtype:
- small input (at most `chunk_pixels` values, any float dtype): one `np.unique` (a sort) of all scores;
- large float16 input (the predictions contract stores maps as float16): one `np.bincount` over the 65,536
  order-preserving 16-bit keys, streamed over chunks — O(N) time, memory independent of N;
- large float32 input (float64 is compared at float32 resolution): a histogram of the upper 16 key bits plans
  groups of key ranges holding at most `chunk_pixels` values each; every group is one more pass that gathers its
  values and sorts them (or, for a single over-full upper bucket, counts the 65,536 lower keys). Peak memory is
  bounded by `chunk_pixels`, time grows with N / chunk_pixels passes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

DEFAULT_CHUNK_PIXELS = 1 << 22

_KEY_TYPES: dict[np.dtype, type[np.unsignedinteger]] = {
    np.dtype(np.float16): np.uint16,
    np.dtype(np.float32): np.uint32,
    np.dtype(np.float64): np.uint64,
}


class MetricWarning(RuntimeWarning):
    """A metric is undefined for this input (e.g. one class only) and is returned as NaN."""


def warn_undefined(metric: str, reason: str) -> float:
    warnings.warn(f"{metric} is undefined ({reason}); returning NaN", MetricWarning, stacklevel=3)
    return float("nan")


@dataclass(frozen=True)
class Chunk:
    """Flat scores with their labels; `weight` (same length, used on positives only, > 0) defaults to 1."""

    scores: np.ndarray
    positive: np.ndarray
    weight: np.ndarray | None = None


@dataclass(frozen=True)
class ChunkSource:
    """`chunks()` is called once per pass over the data and yields the same chunks each time."""

    size: int
    dtype: np.dtype
    chunks: Callable[[], Iterator[Chunk]]


@dataclass(frozen=True)
class Block:
    """Distinct thresholds (descending) with the positive weight and negative count scoring exactly that value."""

    thresholds: np.ndarray
    positive: np.ndarray
    negative: np.ndarray


@dataclass(frozen=True)
class Sweep:
    total_positive: float
    total_negative: float
    blocks: Callable[[], Iterator[Block]]


def float_scores(scores: np.ndarray, what: str = "scores") -> np.ndarray:
    """Scores as a float array (ints become float64); NaN is rejected, -0.0 becomes +0.0."""
    scores = np.asarray(scores)
    if scores.dtype.kind in "iub":
        scores = scores.astype(np.float64)
    elif scores.dtype not in _KEY_TYPES:
        raise ValueError(f"{what} must be float16/32/64 or integer, got dtype {scores.dtype}")
    if np.isnan(scores).any():
        raise ValueError(f"{what} contain NaN; fix the method's output before evaluating")
    return scores + scores.dtype.type(0)


def binary_labels(labels: np.ndarray, what: str = "labels") -> np.ndarray:
    """Labels as bool; only 0/1 (or bool) values are accepted."""
    labels = np.asarray(labels)
    if labels.dtype == np.bool_:
        return labels
    if labels.dtype.kind not in "iuf" or np.any((labels != 0) & (labels != 1)):
        raise ValueError(f"{what} must be binary (0/1 or bool)")
    return labels != 0


def order_keys(scores: np.ndarray) -> np.ndarray:
    """Unsigned integer keys whose order equals the float order (scores must be NaN-free, no -0.0)."""
    key_type = _KEY_TYPES[scores.dtype]
    bits = scores.view(key_type)
    sign = key_type(1) << key_type(8 * scores.dtype.itemsize - 1)
    return np.where(bits & sign, ~bits, bits | sign)


def keys_to_scores(keys: np.ndarray, dtype: np.dtype) -> np.ndarray:
    key_type = _KEY_TYPES[np.dtype(dtype)]
    keys = keys.astype(key_type)
    sign = key_type(1) << key_type(8 * np.dtype(dtype).itemsize - 1)
    return np.where(keys & sign, keys & ~sign, ~keys).view(dtype)


def make_sweep(source: ChunkSource, chunk_pixels: int = DEFAULT_CHUNK_PIXELS) -> Sweep:
    """Pick the exact path for this source (see the module docstring)."""
    if chunk_pixels < 1:
        raise ValueError(f"chunk_pixels must be positive, got {chunk_pixels}")
    if source.size <= chunk_pixels:
        return _unique_sweep(source)
    if source.dtype == np.float16:
        return _histogram16_sweep(source)
    return _bucketed32_sweep(source, chunk_pixels)


def _positive_weights(chunk: Chunk) -> np.ndarray | None:
    return None if chunk.weight is None else chunk.weight[chunk.positive]


def _unique_sweep(source: ChunkSource) -> Sweep:
    chunks = list(source.chunks())
    scores = np.concatenate([c.scores for c in chunks])
    positive = np.concatenate([c.positive for c in chunks])
    weights = None
    if any(c.weight is not None for c in chunks):
        weights = np.concatenate([np.ones(c.scores.size) if c.weight is None else c.weight for c in chunks])
    values, inverse = np.unique(scores, return_inverse=True)
    pos = np.bincount(
        inverse[positive], weights=None if weights is None else weights[positive], minlength=values.size
    )
    neg = np.bincount(inverse[~positive], minlength=values.size)
    block = Block(values[::-1].astype(np.float64), pos[::-1].astype(np.float64), neg[::-1].astype(np.float64))
    return Sweep(float(block.positive.sum()), float(block.negative.sum()), lambda: iter([block]))


def _histogram16_sweep(source: ChunkSource) -> Sweep:
    pos = np.zeros(1 << 16)
    neg = np.zeros(1 << 16)
    for chunk in source.chunks():
        keys = order_keys(chunk.scores)
        pos += np.bincount(keys[chunk.positive], weights=_positive_weights(chunk), minlength=1 << 16)
        neg += np.bincount(keys[~chunk.positive], minlength=1 << 16)
    present = np.flatnonzero((pos > 0) | (neg > 0))[::-1]
    thresholds = keys_to_scores(present.astype(np.uint16), np.dtype(np.float16)).astype(np.float64)
    block = Block(thresholds, pos[present], neg[present])
    return Sweep(float(pos.sum()), float(neg.sum()), lambda: iter([block]))


def _keys32(chunk: Chunk) -> np.ndarray:
    return order_keys(chunk.scores.astype(np.float32, copy=False))


def _bucketed32_sweep(source: ChunkSource, chunk_pixels: int) -> Sweep:
    bucket_counts = np.zeros(1 << 16, dtype=np.int64)
    total_positive = 0.0
    total_negative = 0
    for chunk in source.chunks():
        bucket_counts += np.bincount(_keys32(chunk) >> np.uint32(16), minlength=1 << 16)
        weights = _positive_weights(chunk)
        total_positive += float(np.count_nonzero(chunk.positive) if weights is None else weights.sum())
        total_negative += int(np.count_nonzero(~chunk.positive))
    groups = _plan_groups(bucket_counts, chunk_pixels)

    def blocks() -> Iterator[Block]:
        for first_bucket, last_bucket in groups:
            if first_bucket == last_bucket and bucket_counts[first_bucket] > chunk_pixels:
                yield _count_lower_keys(source, first_bucket)
            else:
                yield _sort_key_range(source, first_bucket, last_bucket)

    return Sweep(total_positive, float(total_negative), blocks)


def _plan_groups(bucket_counts: np.ndarray, chunk_pixels: int) -> list[tuple[int, int]]:
    """Consecutive non-empty upper-key buckets, highest first, grouped to at most chunk_pixels values each."""
    groups: list[tuple[int, int]] = []
    group_last = group_first = -1
    group_size = 0
    for bucket in np.flatnonzero(bucket_counts)[::-1]:
        size = int(bucket_counts[bucket])
        if group_last >= 0 and group_size + size > chunk_pixels:
            groups.append((group_first, group_last))
            group_last = -1
        if group_last < 0:
            group_last, group_size = int(bucket), 0
        group_first = int(bucket)
        group_size += size
    if group_last >= 0:
        groups.append((group_first, group_last))
    return groups


def _count_lower_keys(source: ChunkSource, bucket: int) -> Block:
    pos = np.zeros(1 << 16)
    neg = np.zeros(1 << 16)
    for chunk in source.chunks():
        keys = _keys32(chunk)
        inside = (keys >> np.uint32(16)) == bucket
        lower = keys & np.uint32(0xFFFF)
        in_pos = inside & chunk.positive
        weights = None if chunk.weight is None else chunk.weight[in_pos]
        pos += np.bincount(lower[in_pos], weights=weights, minlength=1 << 16)
        neg += np.bincount(lower[inside & ~chunk.positive], minlength=1 << 16)
    present = np.flatnonzero((pos > 0) | (neg > 0))[::-1]
    keys = (np.uint32(bucket) << np.uint32(16)) | present.astype(np.uint32)
    return Block(keys_to_scores(keys, np.dtype(np.float32)).astype(np.float64), pos[present], neg[present])


def _sort_key_range(source: ChunkSource, first_bucket: int, last_bucket: int) -> Block:
    keys_parts, positive_parts, weight_parts = [], [], []
    for chunk in source.chunks():
        keys = _keys32(chunk)
        upper = keys >> np.uint32(16)
        inside = (upper >= first_bucket) & (upper <= last_bucket)
        keys_parts.append(keys[inside])
        positive_parts.append(chunk.positive[inside])
        weight_parts.append(np.ones(keys_parts[-1].size) if chunk.weight is None else chunk.weight[inside])
    keys = np.concatenate(keys_parts)
    positive = np.concatenate(positive_parts)
    weights = np.concatenate(weight_parts)
    values, inverse = np.unique(keys, return_inverse=True)
    pos = np.bincount(inverse[positive], weights=weights[positive], minlength=values.size)
    neg = np.bincount(inverse[~positive], minlength=values.size).astype(np.float64)
    thresholds = keys_to_scores(values[::-1], np.dtype(np.float32)).astype(np.float64)
    return Block(thresholds, pos[::-1], neg[::-1])


@dataclass(frozen=True)
class CurveSummary:
    """Everything one pass over a sweep yields. Decisions are `score >= threshold`."""

    auroc: float
    average_precision: float
    best_f1: float
    best_threshold: float
    true_positive_at_best: float
    false_positive_at_best: float
    total_positive: float
    total_negative: float
    pro_integral: float


def summarise(sweep: Sweep, fpr_limit: float | None = None) -> CurveSummary:
    """AUROC (trapezoids), AP (sum of recall steps × precision, scikit-learn's definition), best F1 and,
    with `fpr_limit`, the area under (FPR, positive-weight rate) up to the limit divided by the limit.

    Ties at the best F1 go to the lowest threshold (the first argmax over scikit-learn's ascending thresholds).
    Undefined values (a class missing) are NaN; the caller warns.
    """
    total_pos, total_neg = sweep.total_positive, sweep.total_negative
    tp0 = fp0 = 0.0
    roc_area = ap_sum = pro_area = 0.0
    pro_done = fpr_limit is None or total_neg == 0 or total_pos == 0
    best_f1, best_threshold, best_tp, best_fp = -1.0, float("nan"), 0.0, 0.0
    for block in sweep.blocks():
        tp = tp0 + np.cumsum(block.positive)
        fp = fp0 + np.cumsum(block.negative)
        tp_prev = np.concatenate(([tp0], tp[:-1]))
        fp_prev = np.concatenate(([fp0], fp[:-1]))
        roc_area += float(np.sum((fp - fp_prev) * (tp + tp_prev))) / 2
        ap_sum += float(np.sum(block.positive * (tp / (tp + fp))))
        if total_pos > 0:
            f1 = 2 * tp / (tp + fp + total_pos)
            last_max = f1.size - 1 - int(np.argmax(f1[::-1]))
            if f1[last_max] >= best_f1:
                best_f1, best_threshold = float(f1[last_max]), float(block.thresholds[last_max])
                best_tp, best_fp = float(tp[last_max]), float(fp[last_max])
        if not pro_done:
            pro_area, pro_done = _add_limited_area(
                pro_area, fp_prev / total_neg, tp_prev / total_pos, fp / total_neg, tp / total_pos, fpr_limit
            )
        tp0, fp0 = float(tp[-1]), float(fp[-1])
    defined = total_pos > 0 and total_neg > 0
    nan = float("nan")
    return CurveSummary(
        auroc=roc_area / (total_pos * total_neg) if defined else nan,
        average_precision=ap_sum / total_pos if defined else nan,
        best_f1=best_f1 if total_pos > 0 else nan,
        best_threshold=best_threshold,
        true_positive_at_best=best_tp,
        false_positive_at_best=best_fp,
        total_positive=total_pos,
        total_negative=total_neg,
        # a perfect map's summed per-region overlaps can exceed 1 by rounding (1 + 4e-16 seen): PRO is at most 1
        pro_integral=min(1.0, pro_area / fpr_limit) if defined and fpr_limit is not None else nan,
    )


def _add_limited_area(
    area: float, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray, limit: float
) -> tuple[float, bool]:
    """Add trapezoids of segments (x0,y0)→(x1,y1) up to x = limit, interpolating linearly at the limit."""
    inside = int(np.searchsorted(x1, limit, side="right"))
    area += float(np.sum((x1[:inside] - x0[:inside]) * (y1[:inside] + y0[:inside]))) / 2
    if inside == x1.size:
        return area, False
    y_limit = y0[inside] + (y1[inside] - y0[inside]) * (limit - x0[inside]) / (x1[inside] - x0[inside])
    area += float((limit - x0[inside]) * (y0[inside] + y_limit)) / 2
    return area, True
