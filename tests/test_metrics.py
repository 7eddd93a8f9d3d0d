"""defectbench.metrics against scikit-learn, OpenCV and the slow references in defectbench.metrics.reference."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from defectbench.metrics import (
    MetricWarning,
    auroc,
    average_precision,
    best_f1_threshold,
    box_ap,
    box_ap_per_class,
    detection_scores,
    evaluate,
    otsu_threshold,
    otsu_thresholds_per_image,
    p_ap,
    p_auroc,
    pixel_auroc_ap,
    pro_auc,
    segmentation_scores,
    threshold_maps,
)
from defectbench.metrics.reference import reference_pro_auc

SEEDS = (0, 1, 2, 3)


def _blob_maps(seed: int, images: int, size: int, levels: int | None = None, dtype=np.float32):
    """Random maps with elevated blobs where the masks have defects; every other image is normal."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((images, size, size), dtype=bool)
    for index in range(0, images, 2):
        for _ in range(rng.integers(1, 4)):
            row, col = rng.integers(0, size, 2)
            height, width = rng.integers(1, max(2, size // 3), 2)
            masks[index, row : row + height, col : col + width] = True
    maps = rng.random(masks.shape) + masks * rng.random(masks.shape)
    if levels is not None:
        maps = np.round(maps * levels) / levels
    return maps.astype(dtype), masks


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["continuous", "ties", "float16"])
def test_auroc_ap_match_sklearn(seed: int, kind: str) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = {
        "continuous": rng.normal(size=300) + labels,
        "ties": rng.integers(0, 6, 300).astype(np.float64) + labels,
        "float16": (rng.normal(size=300) + labels).astype(np.float16),
    }[kind]
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(labels, scores) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )


def test_all_equal_scores_and_signed_zero() -> None:
    labels = np.array([0, 1, 1, 0, 1])
    assert auroc(labels, np.full(5, 0.7)) == pytest.approx(0.5)
    assert average_precision(labels, np.full(5, 0.7)) == pytest.approx(0.6)
    signed_zeros = np.array([0.0, -0.0, 1.0, -0.0, 0.0])
    assert auroc(labels, signed_zeros) == pytest.approx(roc_auc_score(labels, signed_zeros))


def test_one_class_is_nan_with_warning() -> None:
    with pytest.warns(MetricWarning):
        assert np.isnan(auroc(np.ones(4), np.arange(4.0)))
    with pytest.warns(MetricWarning):
        assert np.isnan(average_precision(np.zeros(4), np.arange(4.0)))
    with pytest.warns(MetricWarning):
        assert np.isnan(p_auroc(np.zeros((2, 3, 3), np.float16), np.zeros((2, 3, 3), bool)))


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="binary"):
        auroc(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="length"):
        auroc(np.array([0, 1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="masks"):
        p_auroc(np.zeros((2, 3, 3)), np.zeros((2, 3, 4)))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("chunk_pixels", [37, 1 << 22])
def test_pixel_metrics_match_sklearn(seed: int, dtype, chunk_pixels: int) -> None:
    """Small chunk_pixels forces the histogram (float16) or bucketed (float32) paths; ties from quantisation."""
    maps, masks = _blob_maps(seed, images=6, size=24, levels=50 if seed % 2 else None, dtype=dtype)
    flat_scores = maps.astype(np.float64).ravel()
    expected_auroc = roc_auc_score(masks.ravel(), flat_scores)
    expected_ap = average_precision_score(masks.ravel(), flat_scores)
    assert p_auroc(maps, masks, chunk_pixels) == pytest.approx(expected_auroc, abs=1e-12)
    assert p_ap(maps, masks, chunk_pixels) == pytest.approx(expected_ap, abs=1e-12)


def test_bucketed_path_with_overfull_bucket() -> None:
    """Many equal float32 values land in one upper-key bucket larger than a chunk: counted by lower keys."""
    rng = np.random.default_rng(5)
    maps = np.where(rng.random((4, 20, 20)) < 0.6, np.float32(0.25), rng.random((4, 20, 20))).astype(
        np.float32
    )
    masks = rng.random(maps.shape) < 0.3
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert p_auroc(maps, masks, chunk_pixels=50) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("dtype", "images"), [(np.float16, 200), (np.float32, 80)])
def test_large_pixel_computation_chunked_equals_unchunked(dtype, images: int) -> None:
    """float16: 65,536-bin histogram path; float32: bucketed multi-pass path; both against one np.unique."""
    maps, masks = _blob_maps(11, images=images, size=256, dtype=dtype)
    chunked = pixel_auroc_ap(maps, masks, chunk_pixels=1 << 21)
    unchunked = pixel_auroc_ap(maps, masks, chunk_pixels=maps.size)
    assert chunked == pytest.approx(unchunked, abs=1e-12)
    assert 0.5 < chunked[0] < 1 and 0 < chunked[1] < 1


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
def test_pro_matches_slow_sweep(seed: int, fpr_limit: float) -> None:
    maps, masks = _blob_maps(seed, images=4, size=12, levels=20 if seed % 2 else None)
    expected = reference_pro_auc(maps, masks, fpr_limit)
    assert pro_auc(maps, masks, fpr_limit) == pytest.approx(expected, abs=1e-12)
    assert pro_auc(maps, masks, fpr_limit, chunk_pixels=50) == pytest.approx(expected, abs=1e-12)
    assert pro_auc(maps.astype(np.float16), masks, fpr_limit, chunk_pixels=50) == pytest.approx(
        reference_pro_auc(maps.astype(np.float16), masks, fpr_limit), abs=1e-12
    )


def test_pro_diagonal_regions_are_one_region_and_single_pixels_count() -> None:
    maps = np.zeros((2, 8, 8), dtype=np.float32)
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # touching diagonally: one 8-connected region
    masks[1, 5, 5] = True  # one-pixel region in another image
    maps[0, 0, 0] = 1.0
    # Curve (0, 0) → (0, mean(1/2, 0) = 0.25) → (1, 1): area up to 0.3 is 0.25·0.3 + 0.75·0.3²/2.
    expected = (0.25 * 0.3 + 0.75 * 0.09 / 2) / 0.3
    assert pro_auc(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert reference_pro_auc(maps, masks) == pytest.approx(expected, abs=1e-12)


def test_pro_of_a_perfect_map_is_exactly_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3×3 region of nine distinct scores: its weights 1/9 sum to 1 + 2e-16 in floating point, and the sweep's cap
    (`min(1, ·)`) makes PRO exactly 1; a map that is not perfect gets the same value with and without the cap."""
    from defectbench.metrics import sweep

    masks = np.zeros((1, 5, 5), dtype=bool)
    masks[0, 1:4, 1:4] = True
    perfect = np.zeros((1, 5, 5), dtype=np.float32)
    perfect[0, 1:4, 1:4] = np.linspace(0.5, 1.0, 9).reshape(3, 3)
    imperfect = perfect.copy()
    imperfect[0, 0, 0] = 0.75  # a normal pixel above four of the region's: FPR 1/16 before they are found
    capped = pro_auc(perfect, masks), pro_auc(imperfect, masks)
    monkeypatch.setattr(sweep, "min", lambda _one, value: value, raising=False)  # the cap removed
    uncapped = pro_auc(perfect, masks), pro_auc(imperfect, masks)
    assert capped[0] == 1.0 and uncapped[0] > 1.0  # measured 1.0000000000000002
    assert capped[1] == uncapped[1] == pytest.approx(reference_pro_auc(imperfect, masks), abs=1e-12)
    assert capped[1] < 1.0


def test_pro_all_equal_scores_and_no_regions() -> None:
    maps = np.full((3, 5, 5), 0.5, dtype=np.float16)
    masks = np.zeros((3, 5, 5), dtype=bool)
    masks[0, 1:3, 1:3] = True
    assert pro_auc(maps, masks) == pytest.approx(0.15, abs=1e-12)  # the diagonal (0,0)→(1,1)
    with pytest.warns(MetricWarning):
        assert np.isnan(pro_auc(maps, np.zeros_like(masks)))


@pytest.mark.parametrize("seed", SEEDS)
def test_detection_metrics_match_sklearn_best_f1(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 120)
    scores = rng.integers(0, 15, 120) + 3 * labels
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f_measures = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    best = int(np.argmax(f_measures[:-1]))
    decisions = scores >= thresholds[best]
    tpr = np.mean(decisions[labels == 1])
    tnr = np.mean(~decisions[labels == 0])
    result = detection_scores(labels, scores)
    assert result["threshold"] == thresholds[best]
    assert result["f1"] == pytest.approx(f_measures[best], abs=1e-12)
    assert result["ca"] == pytest.approx(np.mean(decisions == (labels == 1)), abs=1e-12)
    assert result["macc"] == pytest.approx((tpr + tnr) / 2, abs=1e-12)
    assert result["fp"] == np.count_nonzero(decisions & (labels == 0))
    assert result["fn"] == np.count_nonzero(~decisions & (labels == 1))
    assert result["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert result["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert best_f1_threshold(labels, scores) == pytest.approx((thresholds[best], f_measures[best]))


def test_fp_fn_are_image_counts_at_the_best_f1_threshold() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.6, 0.02, 0.6, 0.3, 0.1, 0.05])
    # F1 of `score >= t` (2TP / (TP + FP + 3)): t=0.9 -> 2/4, t=0.6 -> 4/6 (best), t=0.3 -> 4/7, t=0.1 -> 4/8,
    # t=0.05 -> 4/9, t=0.02 -> 6/10. At t = 0.6 the normal image scored 0.6 is a false positive (>=) and the
    # defective image scored 0.02 the one false negative.
    result = evaluate(scores, labels, metrics=["fp", "fn", "f1", "ca"])
    assert result == pytest.approx({"fp": 1.0, "fn": 1.0, "f1": 4 / 6, "ca": 5 / 7})
    assert detection_scores(labels, scores)["threshold"] == 0.6
    perfect = evaluate(np.array([0.8, 0.9, 0.1, 0.2]), np.array([1, 1, 0, 0]), metrics=["fp", "fn"])
    assert perfect == {"fp": 0.0, "fn": 0.0}
    with pytest.warns(MetricWarning):
        assert np.isnan(evaluate(scores, np.zeros(7, dtype=int), metrics=["fp"])["fp"])


def test_box_ap_positives_inside_negatives_outside() -> None:
    maps = np.zeros((3, 10, 10), dtype=np.float32)
    maps[0, 2, 2] = 0.9  # inside the crack box of image 0
    maps[0, 8, 8] = 0.4  # outside: image 0's negative
    maps[1, 5, 5] = 0.3  # inside the pothole box of image 1
    maps[1, 0, 9] = 0.6  # image 1's negative
    maps[2, 4, 4] = 0.5  # image 2 has no box: its negative is its maximum
    boxes = [[(1, 1, 4, 4, "crack")], [(4, 4, 7.2, 7, "pothole"), (0, 0, 2, 2, "crack")], []]
    crack = average_precision_score([1, 1, 0, 0, 0], [0.9, 0.0, 0.4, 0.6, 0.5])
    pothole = average_precision_score([1, 0, 0, 0], [0.3, 0.4, 0.6, 0.5])
    per_class = box_ap_per_class(maps, boxes)
    assert per_class == pytest.approx({"crack": crack, "pothole": pothole})
    assert box_ap(maps, boxes) == pytest.approx((crack + pothole) / 2)
    with pytest.warns(MetricWarning):
        assert np.isnan(box_ap_per_class(maps, boxes, classes=["crack", "rutting"])["rutting"])
    full = box_ap_per_class(maps[:2], [[(0, 0, 10, 10, "crack")], []])  # image 0 has no outside pixel
    assert full == {"crack": 1.0}  # 0.9 (whole image 0) against image 1's negative 0.6 only
    with pytest.raises(ValueError, match="outside"):
        box_ap(maps[:1], [[(20, 20, 30, 30, "crack")]])


def test_segmentation_scores_dataset_level_counts() -> None:
    gt = np.zeros((2, 4, 4), dtype=bool)
    gt[0, :2, :2] = True  # 4 defect pixels, image 1 normal
    pred = np.zeros_like(gt)
    pred[0, :2, :1] = True  # 2 TP
    pred[1, 3, 3] = True  # 1 FP in the normal image
    scores = segmentation_scores(pred, gt)
    background_iou = 27 / 30  # TN = 32 - 2 - 1 - 2
    assert scores == pytest.approx(
        {"iou": 2 / 5, "miou": (2 / 5 + background_iou) / 2, "precision": 2 / 3, "recall": 1 / 2, "f1": 4 / 7,
         "px_tp": 2, "px_fp": 1, "px_fn": 2, "px_tn": 27}
    )  # fmt: skip
    with pytest.warns(MetricWarning):
        assert np.isnan(segmentation_scores(np.zeros_like(gt), np.zeros_like(gt))["iou"])


@pytest.mark.parametrize("seed", SEEDS)
def test_otsu_matches_opencv_on_uint8(seed: int) -> None:
    rng = np.random.default_rng(seed)
    image = np.concatenate([rng.normal(60, 15, 500), rng.normal(170, 25, 300)]).clip(0, 255).astype(np.uint8)
    expected, _ = cv2.threshold(image.reshape(20, 40), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    assert otsu_threshold(image) == expected
    assert otsu_thresholds_per_image(np.stack([image.reshape(20, 40)] * 2))[1] == expected
    assert otsu_threshold(np.full(7, 3.0)) == 3.0


def test_threshold_rules() -> None:
    maps, masks = _blob_maps(3, images=4, size=16)
    assert np.array_equal(threshold_maps(maps, 0.8), maps >= 0.8)
    per_image = otsu_thresholds_per_image(maps)
    assert np.array_equal(threshold_maps(maps, "otsu")[2], maps[2] > otsu_threshold(maps[2]))
    assert per_image.shape == (4,)
    threshold, best = best_f1_threshold(masks, maps)
    assert threshold_maps(maps, "best_f1", masks).sum() == np.count_nonzero(maps >= threshold)
    assert segmentation_scores(threshold_maps(maps, "best_f1", masks), masks)["f1"] == pytest.approx(best)
    with pytest.raises(ValueError, match="rule"):
        threshold_maps(maps, "median")


def test_evaluate_dispatches_by_metric_name() -> None:
    maps, masks = _blob_maps(4, images=6, size=16, dtype=np.float16)
    labels = masks.reshape(6, -1).any(axis=1).astype(int)
    scores = maps.reshape(6, -1).max(axis=1).astype(np.float64)
    names = ["i_auroc", "i_ap", "p_auroc", "p_ap", "pro", "iou", "miou", "f1", "ca", "macc"]
    result = evaluate(scores, labels, maps, masks, names)
    assert list(result) == names
    assert result["i_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert result["p_ap"] == pytest.approx(p_ap(maps, masks))
    assert result["pro"] == pytest.approx(pro_auc(maps, masks))
    assert result["f1"] == pytest.approx(detection_scores(labels, scores)["f1"])
    pixel = evaluate(scores, labels, maps, masks, ["f1", "iou"], f1_level="pixel", threshold=0.9)
    assert pixel["f1"] == pytest.approx(segmentation_scores(maps >= 0.9, masks)["f1"])
    assert all(0.0 <= value <= 1.0 for value in result.values())
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(scores, labels, metrics=["accuracy"])
    with pytest.raises(ValueError, match="need anomaly maps"):
        evaluate(scores, labels, metrics=["p_auroc"])


def test_pro_image_fully_defective_in_its_own_chunk() -> None:
    maps, masks = _blob_maps(6, images=3, size=5)
    masks[1] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = pro_auc(maps, masks, chunk_pixels=25)
    assert value == pytest.approx(reference_pro_auc(maps, masks), abs=1e-12)
