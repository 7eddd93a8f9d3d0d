"""Click models as workflow methods: `predict` runs the click protocol on every test image with a defect.

A subclass says how to build its `ClickModel` and what the model receives per image; the loop, the kept maps and
the IoU curves live here once, so ADClick and the SAM, SimpleClick and GPCIS baselines are evaluated alike.
Images without a defect get no clicks (nothing to label): their maps are zero and their IoU curve is NaN.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
import torch

from defectbench.data.samples import Sample
from defectbench.methods.base import Method
from defectbench.metrics.clicks import ClickModel, click_loop
from defectbench.predictions import Predictions


class InteractiveMethod(Method):
    """A click model evaluated with the click protocol (params: max_clicks, label_clicks, threshold, stop_iou,
    tie_break)."""

    required_params = ("max_clicks", "label_clicks", "threshold", "stop_iou", "tie_break")

    @abc.abstractmethod
    def click_model(self) -> ClickModel:
        """The fitted (or off-the-shelf) click model."""

    @abc.abstractmethod
    def image_input(self, sample: Sample, eval_size: tuple[int, int]) -> Any:
        """What the click model receives for one image of size `eval_size` (the clicks' coordinate frame)."""

    def predict(self, samples: list[Sample], eval_size: tuple[int, int]) -> Predictions:
        keep = [int(k) for k in self.params["label_clicks"]]
        max_clicks = int(self.params["max_clicks"])
        model = self.click_model()
        maps = np.zeros((len(samples), *eval_size), np.float16)
        kept = {k: np.zeros((len(samples), *eval_size), np.float16) for k in keep}
        ious = np.full((len(samples), max_clicks), np.nan)  # float64: IoU 0.9 must stay >= 0.9 for NoC@90
        with torch.no_grad():
            for index, sample in enumerate(samples):
                gt = sample.read_mask(eval_size) > 0
                if not gt.any():
                    continue
                run = click_loop(
                    model,
                    self.image_input(sample, eval_size),
                    gt,
                    max_clicks=max_clicks,
                    keep=keep,
                    threshold=float(self.params["threshold"]),
                    stop_iou=self.params["stop_iou"],
                    tie_break=self.params["tie_break"],
                    seed=self.seed * 100_003 + index,
                )
                ious[index] = run.ious
                for k, probs in run.maps.items():
                    kept[k][index] = probs
                maps[index] = run.maps[max(keep)]
        scores = maps.reshape(len(samples), -1).max(axis=1) if len(samples) else np.zeros(0)
        return Predictions([s.image_id for s in samples], scores, maps, ious, kept)
