"""Region-Aware CAM (RA-CAM) with filtering-guided backpropagation, and the CAM baselines it is compared with.

One registered method, `racam`: it trains the VGG16 image classifier (or reuses the one of its `upstream:` run)
and predicts the defect-class map of the CAM named by `cam` (RA-CAM or a pytorch_grad_cam baseline, optionally
with FGBP plugged in). Maps are gated per image by `gate` (see `RegionAwareCAMMethod.predict`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from defectbench.data.samples import Sample
from defectbench.methods.base import Method, Predictions, register
from defectbench.methods.images import load_images
from defectbench.methods.racam.cams import CAM_METHODS, cam_maps
from defectbench.methods.racam.classifier import (
    StagedClassifier,
    build_classifier,
    defect_probability,
    train_classifier,
)
from defectbench.methods.racam.fgbp import filter_gradient, filtering_guided_backprop, percentile_of_positives
from defectbench.training import seed_everything

__all__ = [
    "CAM_METHODS",
    "RegionAwareCAMMethod",
    "StagedClassifier",
    "cam_maps",
    "filter_gradient",
    "filtering_guided_backprop",
    "percentile_of_positives",
]

GATES = ("label", "prediction", "none")


@register("racam")
class RegionAwareCAMMethod(Method):
    """Classifier + CAM. Without `upstream` `fit` trains the classifier; with it, the upstream classifier is
    reused unchanged, so every CAM experiment of a unit explains the same network."""

    classifier: StagedClassifier | None = None

    def fit(self, train: list[Sample], val: list[Sample] | None = None) -> list[dict[str, float]]:
        self._check_params()
        if self.upstream is not None:
            if not isinstance(self.upstream, RegionAwareCAMMethod) or self.upstream.classifier is None:
                raise ValueError("the upstream of a racam experiment must be a fitted racam run")
            self.classifier = self.upstream.classifier
            return []
        seed_everything(self.seed)
        self.classifier = build_classifier(self.params, self.seed)
        checkpoint = self.checkpoint_path
        return train_classifier(self.classifier, train, self.params, self.device, self.seed, checkpoint)

    def predict(self, samples: list[Sample], eval_size: tuple[int, int]) -> Predictions:
        """Score = the classifier's defect probability. Map = the CAM, bilinearly resized to `eval_size`, or zero
        where the gate says the image holds no defect: `prediction` (default) the classifier's own decision
        (probability ≥ 0.5), `label` the true image label (an oracle on test images; legitimate on training images,
        whose labels are the weak supervision), `none` keeps every map."""
        if self.classifier is None:
            raise RuntimeError("racam: call fit() or load_state_dict() before predict()")
        self._check_params()
        batch_size = int(self.params["cam_batch_size"])
        scores, maps = [], []
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            images = load_images(chunk, self.params["input_size"])
            probability = defect_probability(self.classifier, images, self.device)
            keep = self._gate(chunk, probability)
            chunk_maps = torch.zeros(len(chunk), *eval_size)
            if keep.any():  # gated-out images keep a zero map; their CAM is not computed
                cam = torch.from_numpy(cam_maps(self.classifier, images[keep], self.params, self.device))
                chunk_maps[keep] = F.interpolate(
                    cam[:, None], size=tuple(eval_size), mode="bilinear", align_corners=False
                )[:, 0]
            maps.append(chunk_maps.numpy())
            scores.append(probability)
        return Predictions(
            [sample.image_id for sample in samples],
            np.concatenate(scores),
            np.concatenate(maps) if maps else np.zeros((0, *eval_size), np.float32),
        )

    def _gate(self, samples: list[Sample], probability: np.ndarray) -> torch.Tensor:
        gate = self.params["gate"]
        if gate == "label":
            return torch.tensor([sample.label == 1 for sample in samples])
        if gate == "prediction":
            return torch.from_numpy(probability >= 0.5)
        return torch.ones(len(samples), dtype=torch.bool)

    def _check_params(self) -> None:
        if self.params["cam"] not in CAM_METHODS:
            raise ValueError(f"racam: unknown cam {self.params['cam']!r}; choose one of {CAM_METHODS}")
        if self.params["gate"] not in GATES:
            raise ValueError(f"racam: unknown gate {self.params['gate']!r}; choose one of {GATES}")

    def state_dict(self) -> dict[str, Any]:
        if self.classifier is None:
            raise RuntimeError("racam: nothing to save before fit()")
        return {"classifier": self.classifier.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.classifier = build_classifier({**self.params, "pretrained": False}, self.seed)
        self.classifier.load_state_dict(state["classifier"])
        self.classifier.to(self.device).eval()
