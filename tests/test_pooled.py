"""`pooled` table cells: segmentation ratios of one confusion matrix summed over units (RA-CAM's KSDD folds)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from defectbench.metrics import evaluate
from defectbench.tables import TableInputError, load_spec
from defectbench.tables.sources import MeasuredIndex


def _counts(category: str, tp: int, fp: int, fn: int, tn: int) -> list[dict]:
    values = {"px_tp": tp, "px_fp": fp, "px_fn": fn, "px_tn": tn, "iou": tp / (tp + fp + fn)}
    return [
        {"experiment": "e", "dataset": "ksdd", "category": category, "seed": 0, "metric": m, "value": v}
        for m, v in values.items()
    ]


def test_pooled_cell_is_one_confusion_matrix_not_the_mean_of_ratios() -> None:
    metrics = pd.DataFrame(_counts("fold0", 90, 10, 0, 900) + _counts("fold1", 1, 0, 9, 990))
    index = MeasuredIndex(metrics)
    keys = {"experiment": "e", "dataset": "ksdd", "category": ["fold0", "fold1", "fold2"], "metric": "iou"}
    mean = index.lookup({**keys, "aggregate": "mean"})
    pooled = index.lookup({**keys, "aggregate": "pooled"})
    assert mean.value == pytest.approx((0.9 + 0.1) / 2)
    assert pooled.value == pytest.approx(91 / (91 + 10 + 9))  # 0.827, not 0.5
    assert (pooled.n_units, pooled.units_total) == (2, 3)
    f1 = index.lookup({**keys, "aggregate": "pooled", "metric": "f1"}).value
    assert pooled.value == pytest.approx(f1 / (2 - f1))  # the identity the paper's rows satisfy
    precision = index.lookup({**keys, "aggregate": "pooled", "metric": "precision"}).value
    recall = index.lookup({**keys, "aggregate": "pooled", "metric": "recall"}).value
    assert f1 == pytest.approx(2 * precision * recall / (precision + recall))
    miou = index.lookup({**keys, "aggregate": "pooled", "metric": "miou"}).value
    assert miou == pytest.approx((91 / 110 + 1890 / (1890 + 19)) / 2)


def test_evaluate_reports_the_pixel_counts_of_its_ratios() -> None:
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, :2, :2] = 1.0
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2, :3] = True
    names = ["iou", "px_tp", "px_fp", "px_fn", "px_tn"]
    values = evaluate(np.array([1.0, 0.0]), np.array([1, 0]), maps, masks, names, threshold=0.5)
    assert [values[n] for n in names[1:]] == [4, 0, 2, 26]
    assert values["iou"] == pytest.approx(4 / 6)


def test_pooled_needs_a_segmentation_ratio(tmp_path) -> None:
    spec = tmp_path / "t.yaml"
    spec.write_text(
        "tables:\n  t:\n    title: t\n    defaults: {dataset: ksdd, category: [fold0], aggregate: pooled}\n"
        "    rows: [{label: r, experiment: e}]\n    columns: [{label: AP, metric: i_ap}]\n"
    )
    with pytest.raises(TableInputError, match="`pooled` cell needs one of"):
        load_spec(spec)
