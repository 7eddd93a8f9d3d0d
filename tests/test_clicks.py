"""The click protocol on hand-made masks, against hand computations (RITM's clicker and NoC/mIoU@k)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from defectbench.metrics.clicks import Click, Clicker, ClickModel, click_loop, click_metrics, noc


class FixedModel(ClickModel):
    """Returns a preset map per click count (the last one after that): a model with a known IoU curve."""

    def __init__(self, maps: list[np.ndarray]):
        self.maps = maps
        self.calls: list[list[Click]] = []

    def predict(self, prepared: object, clicks: list[Click], previous: np.ndarray) -> np.ndarray:
        self.calls.append(list(clicks))
        return self.maps[min(len(clicks), len(self.maps)) - 1].astype(np.float32)


def square(shape: tuple[int, int], y0: int, x0: int, size: int) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y0 : y0 + size, x0 : x0 + size] = True
    return mask


def test_first_click_at_the_centre_of_the_largest_component() -> None:
    gt = square((40, 40), 6, 6, 9) | square((40, 40), 25, 28, 5)
    click = Clicker(gt).next_click(np.zeros_like(gt))
    assert click == Click(10, 10, True)


def test_a_false_positive_blob_draws_a_negative_click() -> None:
    gt = square((40, 40), 2, 2, 6)
    blob = square((40, 40), 20, 20, 11)  # FP region larger than the remaining FN region
    click = Clicker(gt).next_click(gt | blob)
    assert click == Click(25, 25, False)


def test_ties_first_arg_max_or_seeded_random() -> None:
    gt = np.zeros((8, 16), bool)
    gt[2:6, 2:14] = True  # a 4x12 bar: its distance maximum (2) is a whole row segment
    first = Clicker(gt).next_click(np.zeros_like(gt))
    assert first == Click(3, 3, True)
    draws = {Clicker(gt, "random", seed).next_click(np.zeros_like(gt)) for seed in range(10)}
    assert len(draws) > 1 and all(c.y in (3, 4) and 3 <= c.x <= 12 and c.positive for c in draws)
    assert Clicker(gt, "random", 3).next_click(np.zeros_like(gt)) == Clicker(gt, "random", 3).next_click(
        np.zeros_like(gt)
    )


def test_clicked_pixels_are_not_clicked_again() -> None:
    gt = square((20, 20), 5, 5, 5)
    clicker = Clicker(gt)
    pred = np.zeros_like(gt)
    clicks = [clicker.next_click(pred) for _ in range(3)]
    assert len({(c.y, c.x) for c in clicks}) == 3 and clicks[0] == Click(7, 7, True)


def test_noc_is_max_clicks_when_the_target_is_never_reached() -> None:
    gt = square((30, 30), 10, 10, 8)
    model = FixedModel([np.zeros(gt.shape)])
    run = click_loop(model, None, gt)
    assert len(run.clicks) == 20 and np.all(run.ious == 0)
    assert noc(run.ious, 0.85) == 20 and noc(run.ious, 0.90) == 20
    metrics = click_metrics([run], gt[None], label_clicks=())
    assert metrics["noc85"] == 20 and metrics["noc90"] == 20


def test_iou_curve_noc_and_miou_at_k_by_hand() -> None:
    gt = square((20, 20), 0, 0, 10)  # 100 pixels
    grow = [square((20, 20), 0, 0, 10) & (np.arange(20)[:, None] < rows) for rows in (3, 5, 9, 10)]
    run_a = click_loop(FixedModel(grow), None, gt, max_clicks=6, keep=(1, 3))
    # IoU after k clicks: 30/100, 50/100, 90/100, then perfect (loop stops: nothing left to click)
    np.testing.assert_allclose(run_a.ious, [0.3, 0.5, 0.9, 1.0, 1.0, 1.0])
    assert len(run_a.clicks) == 4
    half = square((20, 20), 0, 0, 10) & (np.arange(20)[None, :] < 5)  # 50 of 100 pixels
    run_b = click_loop(FixedModel([half]), None, gt, max_clicks=6, keep=(1, 3))
    metrics = click_metrics(
        [run_a, run_b], np.stack([gt, gt]), label_clicks=(3,), miou_clicks=(1,), max_clicks=6
    )
    assert metrics["noc85"] == pytest.approx((3 + 6) / 2)
    assert metrics["noc90"] == pytest.approx((3 + 6) / 2)
    assert metrics["miou_c1"] == pytest.approx((0.3 + 0.5) / 2)
    assert metrics["miou_c3"] == pytest.approx((0.9 + 0.5) / 2)
    assert 0 < metrics["p_ap_c3"] <= 1 and 0 < metrics["pro_c3"] <= 1 and 0.5 < metrics["p_auroc_c3"] <= 1


def test_the_previous_map_is_fed_back_and_the_loop_stops_at_stop_iou() -> None:
    gt = square((20, 20), 4, 4, 6)

    seen: list[float] = []

    class Echo(ClickModel):
        def predict(self, prepared: object, clicks: list[Click], previous: np.ndarray) -> np.ndarray:
            seen.append(float(previous.sum()))
            return gt.astype(np.float32) * 0.9

    run = click_loop(Echo(), None, gt, stop_iou=0.9, keep=(1,))
    assert seen == [0.0] and len(run.clicks) == 1 and run.ious[0] == 1.0 and np.isnan(run.ious[1])


def test_empty_ground_truth_gives_undefined_noc_not_zero() -> None:
    gt = np.zeros((10, 10), bool)
    run = click_loop(FixedModel([np.zeros((10, 10))]), None, gt, keep=(3,))
    assert run.clicks == [] and np.isnan(run.ious).all()
    assert math.isnan(noc(run.ious, 0.85))
    metrics = click_metrics([run], gt[None], label_clicks=(3,))
    assert math.isnan(metrics["noc85"]) and math.isnan(metrics["miou_c3"]) and math.isnan(metrics["p_ap_c3"])


def test_a_click_outside_the_image_is_a_clear_error() -> None:
    model = FixedModel([np.zeros((10, 12))])
    with pytest.raises(ValueError, match=r"click at \(y=10, x=3\) lies outside the 10x12 image"):
        model(None, [Click(10, 3, True)], np.zeros((10, 12)))
    with pytest.raises(ValueError, match="outside"):
        model(None, [Click(0, -1, False)], np.zeros((10, 12)))


def test_a_model_returning_another_size_is_refused() -> None:
    model = FixedModel([np.zeros((5, 5))])
    with pytest.raises(ValueError, match="returned a"):
        model(None, [Click(1, 1, True)], np.zeros((10, 10)))


def test_click_curves_survive_predictions_npz_and_give_the_same_metrics(tmp_path) -> None:
    from defectbench.metrics.clicks import metrics_from_predictions
    from defectbench.predictions import Predictions

    gt = square((20, 20), 0, 0, 10)
    grow = [square((20, 20), 0, 0, 10) & (np.arange(20)[:, None] < rows) for rows in (3, 5, 9, 10)]
    runs = [
        click_loop(FixedModel(grow), None, gt, max_clicks=6, keep=(3, 5)),
        click_loop(FixedModel(grow), None, gt * 0),
    ]
    runs[1] = click_loop(FixedModel(grow), None, np.zeros_like(gt), max_clicks=6, keep=(3, 5))
    ious = np.stack([r.ious for r in runs])
    maps = {k: np.stack([r.maps.get(k, np.zeros(gt.shape)) for r in runs]) for k in (3, 5)}
    Predictions(["a", "b"], [1, 0], maps[5], ious, maps).save(tmp_path / "p.npz")
    loaded = Predictions.load(tmp_path / "p.npz")
    masks = np.stack([gt, np.zeros_like(gt)])
    names = ["noc85", "noc90", "miou_c1", "p_ap_c3", "miou_c5"]
    values = metrics_from_predictions(loaded.click_ious, loaded.click_maps, masks, names)
    expected = click_metrics(runs, masks, label_clicks=(3, 5), miou_clicks=(1,), max_clicks=6)
    assert values == pytest.approx({n: expected[n] for n in names})
    assert values["noc85"] == 3 and values["miou_c1"] == pytest.approx(0.3)  # the empty image is left out
    with pytest.raises(ValueError, match="maps after those clicks"):
        metrics_from_predictions(loaded.click_ious, loaded.click_maps, masks, ["p_ap_c4"])
    with pytest.raises(ValueError, match="disagree in length"):
        Predictions(["a", "b"], [1, 0], maps[5], ious[:1], maps)
