"""Time defectbench.metrics against scikit-learn and the slow PRO sweep reference; report peak memory.

Usage: .venv/bin/python bench/bench_metrics.py [--images 200] [--size 256] [--reference-thresholds 10]

Maps are random float16 maps (what predictions.npz stores) with brighter blob defects in every other image.
The PRO reference (defectbench.metrics.reference.reference_pro_curve) costs one full pass over all pixels and
regions per threshold; it is timed on --reference-thresholds thresholds and extrapolated linearly to the number
of distinct scores, which the exact definition sweeps. Peak memory is tracemalloc's peak of each call (numpy
reports its buffers to tracemalloc), not counting the input maps and masks.
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from defectbench.metrics import i_ap, i_auroc, p_ap, p_auroc, pro_auc
from defectbench.metrics.reference import reference_pro_curve


def blob_maps(images: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    maps = np.empty((images, size, size), dtype=np.float16)
    masks = np.zeros((images, size, size), dtype=bool)
    rows, cols = np.mgrid[:size, :size]
    for index in range(images):
        score = rng.random((size, size), dtype=np.float32) * 0.6
        if index % 2 == 0:
            for _ in range(rng.integers(1, 4)):
                centre = rng.integers(0, size, 2)
                radius = rng.uniform(2, size / 12)
                blob = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2
                masks[index] |= blob
                score[blob] += rng.uniform(0.1, 0.5)
        maps[index] = score
    return maps, masks


def measure(function: Callable[[], float]) -> tuple[float, float, float]:
    """(value, seconds, peak MiB allocated during the call)."""
    tracemalloc.start()
    start = time.perf_counter()
    value = function()
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return value, seconds, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--reference-thresholds", type=int, default=10)
    parser.add_argument("--skip-sklearn-pixels", action="store_true", help="for very large --images")
    args = parser.parse_args()

    maps, masks = blob_maps(args.images, args.size)
    maps32 = maps.astype(np.float32)
    labels = masks.reshape(args.images, -1).any(axis=1)
    scores = maps.reshape(args.images, -1).max(axis=1).astype(np.float64)
    flat_labels, flat_scores = masks.ravel(), maps32.ravel()
    print(
        f"{args.images} maps of {args.size}x{args.size} = {maps.size / 1e6:.1f}M pixels, "
        f"{np.count_nonzero(masks) / masks.size:.2%} defect pixels"
    )

    rows = [
        ("i_auroc", lambda: i_auroc(labels, scores), lambda: roc_auc_score(labels, scores), "sklearn"),
        ("i_ap", lambda: i_ap(labels, scores), lambda: average_precision_score(labels, scores), "sklearn"),
    ]
    for name, ours, theirs in (
        ("p_auroc", p_auroc, roc_auc_score),
        ("p_ap", p_ap, average_precision_score),
    ):
        reference = None if args.skip_sklearn_pixels else (lambda f=theirs: f(flat_labels, flat_scores))
        rows.append((f"{name} f16", lambda f=ours: f(maps, masks), reference, "sklearn"))
        rows.append((f"{name} f32", lambda f=ours: f(maps32, masks), reference, "sklearn"))

    print(
        f"{'metric':<12} {'ours s':>8} {'ours MiB':>9} {'ref s':>10} {'ref MiB':>9} {'ref':<22} {'|diff|':>9}"
    )
    for name, ours, reference, reference_name in rows:
        value, seconds, peak = measure(ours)
        if reference is None:
            print(
                f"{name:<12} {seconds:8.3f} {peak:9.1f} {'-':>10} {'-':>9} {'skipped':<22} {'-':>9}  {value:.6f}"
            )
            continue
        expected, ref_seconds, ref_peak = measure(reference)
        print(
            f"{name:<12} {seconds:8.3f} {peak:9.1f} {ref_seconds:10.3f} {ref_peak:9.1f} "
            f"{reference_name:<22} {abs(value - expected):9.1e}"
        )

    value, seconds, peak = measure(lambda: pro_auc(maps, masks))
    distinct = np.unique(maps).size
    subset = np.unique(maps)[:: max(1, distinct // args.reference_thresholds)][: args.reference_thresholds]
    _, ref_seconds, ref_peak = measure(lambda: reference_pro_curve(maps, masks, subset))
    extrapolated = ref_seconds / subset.size * distinct
    print(
        f"{'pro f16':<12} {seconds:8.3f} {peak:9.1f} {extrapolated:10.1f} {ref_peak:9.1f} "
        f"{f'sweep {subset.size}->{distinct} thr':<22} {'-':>9}  pro={value:.4f}"
    )
    value, seconds, peak = measure(lambda: pro_auc(maps32, masks))
    print(f"{'pro f32':<12} {seconds:8.3f} {peak:9.1f} {'-':>10} {'-':>9} {'':<22} {'-':>9}  pro={value:.4f}")
    print(
        f"process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB "
        f"(inputs: maps f16 {maps.nbytes / 2**20:.0f} MiB, f32 {maps32.nbytes / 2**20:.0f} MiB, "
        f"masks {masks.nbytes / 2**20:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
