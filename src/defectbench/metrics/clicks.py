"""The interactive-segmentation click protocol (RITM's evaluation clicker and loop), used for every click model.

Protocol (RITM `isegm/inference/clicker.py` and `evaluation.py`, also SimpleClick's and ADClick's): start from an
empty mask; before each click the errors of the current binary mask (probability > `threshold`, 0.49) are split
into false negatives and false positives, each zero-padded by one pixel and put through an exact L2 distance
transform, masked by the not-yet-clicked pixels; the click is positive iff the FN maximum is larger than the FP
maximum, at the first arg-max in row-major order (RITM) or a seeded random one among the arg-max points (ADClick's
option). The model then gets the image, every click so far and its previous probability map, and returns a new
probability map. NoC@t is the first click count whose IoU reaches t, or `max_clicks` when none does.

Undefined values: an image whose ground truth is empty gets no clicks (there is no error to correct); its IoU
curve is NaN and so are its NoC values, and `click_metrics` averages NoC/mIoU over the images where they are
defined (all NaN when none is).
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from defectbench.metrics.evaluate import evaluate as evaluate_maps

MAX_CLICKS = 20  # RITM / SimpleClick / ADClick evaluation
THRESHOLD = 0.49  # RITM's pred_thr: a pixel is predicted defective when its probability exceeds it
LABEL_METRICS = ("p_ap", "pro", "p_auroc", "miou")  # ADClick Table 1, after exactly 3 and 5 clicks
# noc85/noc90 and <metric>_c<k> = that metric of the maps after exactly k clicks (workflow/schemas/metrics.schema)
CLICK_METRIC = re.compile(r"^(noc85|noc90|(?:p_ap|pro|p_auroc|miou)_c([1-9][0-9]*))$")


@dataclass(frozen=True)
class Click:
    """One user click at pixel (y, x) of the evaluation-size image; positive = 'this is a defect'."""

    y: int
    x: int
    positive: bool


def check_clicks(clicks: Sequence[Click], shape: tuple[int, int]) -> None:
    """Raise ValueError for a click outside an image of `shape` = (H, W): models index maps with them."""
    height, width = shape
    for click in clicks:
        if not (0 <= click.y < height and 0 <= click.x < width):
            raise ValueError(
                f"click at (y={click.y}, x={click.x}) lies outside the {height}x{width} image; clicks are pixel "
                "coordinates of the evaluation-size image"
            )


class ClickModel(abc.ABC):
    """Anything that turns (image, clicks, previous mask) into a probability map at the image's size."""

    def prepare(self, image: Any) -> Any:
        """Per-image work done once before the clicks (e.g. SAM's image embedding); default: nothing."""
        return image

    def __call__(self, prepared: Any, clicks: Sequence[Click], previous: np.ndarray) -> np.ndarray:
        """(H, W) defect probabilities in [0, 1] given every click so far and the previous probability map."""
        previous = np.asarray(previous, np.float32)
        if previous.ndim != 2:
            raise ValueError(f"the previous mask must be one (H, W) map, got shape {previous.shape}")
        check_clicks(clicks, previous.shape)
        probs = np.asarray(self.predict(prepared, list(clicks), previous), np.float32)
        if probs.shape != previous.shape:
            raise ValueError(
                f"{type(self).__name__} returned a {probs.shape} map for a {previous.shape} image"
            )
        return probs

    @abc.abstractmethod
    def predict(self, prepared: Any, clicks: list[Click], previous: np.ndarray) -> np.ndarray:
        """The model's map for checked clicks inside the image and a previous map of the image's size."""


class Clicker:
    """RITM's clicker for one ground-truth mask. `tie_break`: 'first' arg-max (RITM evaluation), 'random' arg-max
    (ADClick evaluation), or 'inner': a random pixel deeper than half the maximum (RITM/SimpleClick training)."""

    def __init__(self, gt: np.ndarray, tie_break: str = "first", seed: int = 0):
        if tie_break not in ("first", "random", "inner"):
            raise ValueError(f"tie_break must be 'first', 'random' or 'inner', got {tie_break!r}")
        self.gt = np.asarray(gt).astype(bool)
        self.not_clicked = np.ones_like(self.gt)
        self.clicks: list[Click] = []
        self.tie_break = tie_break
        self.rng = np.random.default_rng(seed)

    def next_click(self, pred: np.ndarray) -> Click | None:
        """The click correcting the larger error of the binary prediction `pred`; None when nothing is wrong."""
        pred = np.asarray(pred).astype(bool)
        if pred.shape != self.gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {self.gt.shape} differ in shape")
        fn_dt = _padded_distance(self.gt & ~pred) * self.not_clicked
        fp_dt = _padded_distance(~self.gt & pred) * self.not_clicked
        fn_max, fp_max = fn_dt.max(), fp_dt.max()
        if max(fn_max, fp_max) <= 0:
            return None
        positive = bool(fn_max > fp_max)
        dt, top = (fn_dt, fn_max) if positive else (fp_dt, fp_max)
        candidates = np.flatnonzero(dt.ravel() > top / 2 if self.tie_break == "inner" else dt.ravel() == top)
        index = candidates[0] if self.tie_break == "first" else self.rng.choice(candidates)
        y, x = np.unravel_index(int(index), dt.shape)
        click = Click(int(y), int(x), positive)
        self.clicks.append(click)
        self.not_clicked[y, x] = False
        return click


def _padded_distance(region: np.ndarray) -> np.ndarray:
    """Exact L2 distance of each region pixel to the nearest non-region pixel, the image border counting as one."""
    padded = np.pad(region, 1, constant_values=False)
    return ndimage.distance_transform_edt(padded)[1:-1, 1:-1]


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two binary masks (NaN when both are empty)."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    union = np.count_nonzero(pred | gt)
    return float(np.count_nonzero(pred & gt) / union) if union else float("nan")


@dataclass
class ClickRun:
    """The click loop on one image: the clicks, the IoU after each, and the probability maps kept."""

    clicks: list[Click]
    ious: (
        np.ndarray
    )  # (max_clicks,) IoU after 1..max_clicks clicks; NaN after the loop stopped or for empty GT
    maps: dict[int, np.ndarray] = field(default_factory=dict)  # click count -> (H, W) float32 probabilities


def click_loop(
    model: ClickModel,
    image: Any,
    gt: np.ndarray,
    max_clicks: int = MAX_CLICKS,
    keep: Iterable[int] = (),
    threshold: float = THRESHOLD,
    stop_iou: float | None = None,
    tie_break: str = "first",
    seed: int = 0,
) -> ClickRun:
    """Simulate up to `max_clicks` clicks; keep the maps after the click counts in `keep`.

    The loop stops early once the IoU reaches `stop_iou` and every count in `keep` is reached (later IoUs are
    NaN; NoC only needs the first crossing). A click count in `keep` that the loop never reaches because the
    prediction became perfect keeps the last map (nothing left to correct).
    """
    keep = sorted(set(keep))
    if keep and (keep[0] < 1 or keep[-1] > max_clicks):
        raise ValueError(f"click counts to keep {keep} must lie in 1..{max_clicks}")
    gt = np.asarray(gt).astype(bool)
    ious = np.full(max_clicks, np.nan)
    run = ClickRun([], ious)
    if not gt.any():
        return run
    clicker = Clicker(gt, tie_break, seed)
    prepared = model.prepare(image)
    probs = np.zeros(gt.shape, np.float32)
    for index in range(max_clicks):
        click = clicker.next_click(probs > threshold)
        if click is None:  # perfect: every further click would change nothing
            ious[index:] = 1.0
            for count in keep:
                run.maps.setdefault(count, probs)
            break
        probs = model(prepared, clicker.clicks, probs)
        ious[index] = iou(probs > threshold, gt)
        if index + 1 in keep:
            run.maps[index + 1] = probs
        if stop_iou is not None and ious[index] >= stop_iou and index + 1 >= (keep[-1] if keep else 0):
            break
    run.clicks = list(clicker.clicks)
    return run


def noc(ious: np.ndarray, target: float, max_clicks: int = MAX_CLICKS) -> float:
    """Number of clicks to reach IoU `target` (first crossing), `max_clicks` if never; NaN for an undefined curve."""
    ious = np.asarray(ious, float)
    if np.isnan(ious).all():
        return float("nan")
    reached = np.flatnonzero(np.nan_to_num(ious, nan=-1.0) >= target)
    return float(reached[0] + 1) if reached.size else float(max_clicks)


def click_metrics(
    runs: Sequence[ClickRun],
    gts: np.ndarray,
    label_clicks: Iterable[int] = (3, 5),
    miou_clicks: Iterable[int] = (),
    max_clicks: int = MAX_CLICKS,
) -> dict[str, float]:
    """noc85, noc90 (mean over images with a defined curve), miou_c<k> (mean per-image IoU after k clicks,
    RITM's mIoU@k) and, for each k in `label_clicks`, p_ap_c<k>, pro_c<k>, p_auroc_c<k>, miou_c<k> of the
    probability maps after exactly k clicks over the images with a non-empty ground truth (ADClick Table 1)."""
    curves = np.stack([run.ious for run in runs]) if runs else np.zeros((0, max_clicks))
    defined = ~np.isnan(curves).all(axis=1)
    result = {
        f"noc{round(t * 100)}": _mean([noc(c, t, max_clicks) for c in curves[defined]]) for t in (0.85, 0.90)
    }
    for k in sorted(set(miou_clicks) | set(label_clicks)):
        result[f"miou_c{k}"] = _mean(list(curves[defined, k - 1]))
    for k in sorted(set(label_clicks)):
        chosen = [i for i, run in enumerate(runs) if k in run.maps]
        if not chosen:
            result |= {f"{name}_c{k}": float("nan") for name in LABEL_METRICS if name != "miou"}
            continue
        maps = np.stack([runs[i].maps[k] for i in chosen])
        masks = np.stack([np.asarray(gts[i], bool) for i in chosen])
        values = evaluate_maps(
            np.zeros(len(chosen)), np.ones(len(chosen)), maps, masks, ("p_ap", "pro", "p_auroc")
        )
        result |= {f"{name}_c{k}": value for name, value in values.items()}
    return result


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def is_click_metric(name: str) -> bool:
    """Whether `name` is measured by the click protocol (noc85, noc90, p_ap_c5, miou_c3, ...)."""
    return bool(CLICK_METRIC.match(name))


def metrics_from_predictions(
    ious: np.ndarray, click_maps: dict[int, np.ndarray], masks: np.ndarray, names: Sequence[str]
) -> dict[str, float]:
    """The click metrics `names` from a predictions.npz's IoU curves and maps after k clicks (same image order
    as `masks`); a label metric after k clicks needs the maps after k clicks to have been kept."""
    ious = np.asarray(ious, float)
    wanted = {int(m.group(2)) for m in map(CLICK_METRIC.match, names) if m and m.group(2)}
    missing = sorted(k for k in wanted if k not in click_maps and k > ious.shape[1])
    if missing:
        raise ValueError(
            f"click metrics after {missing} clicks need a longer click loop ({ious.shape[1]} clicks)"
        )
    label_clicks = sorted(k for k in wanted if k in click_maps)
    runs = [
        ClickRun(
            [],
            curve,
            {k: click_maps[k][i].astype(np.float32) for k in label_clicks if not np.isnan(curve).all()},
        )
        for i, curve in enumerate(ious)
    ]
    values = click_metrics(runs, masks, label_clicks, wanted - set(label_clicks), ious.shape[1])
    unknown = [name for name in names if name not in values]
    if unknown:
        raise ValueError(f"click metrics {unknown} need the maps after those clicks in predictions.npz")
    return {name: values[name] for name in names}
