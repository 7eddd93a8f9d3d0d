"""SegDecNet's two target choices where paper and authors' code differ: decision target and DT normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from defectbench.data.samples import Sample
from defectbench.data.weak_labels import segdec_loss_weights
from defectbench.methods.base import build
from defectbench.methods.segdec.targets import segmentation_targets

PARAMS = {
    "input_size": [128, 64], "channels": 1, "volume_channels": 8, "epochs": 1, "lr": 0.01, "delta": 1.0,
    "batch_size": 1, "dilate": 1, "p": 2.0, "w_pos": 3.0, "dynamic_balancing": True, "gradient_adjustment": True,
    "distance_transform": True, "frequency_sampling": True, "decision_target": "hard", "dt_normalisation": "region",
}  # fmt: skip


def two_regions() -> np.ndarray:
    mask = np.zeros((40, 40), bool)
    mask[2:22, 2:22] = True  # large region: D_max 10
    mask[30:34, 30:34] = True  # small region: D_max 2
    return mask


def test_region_normalisation_gives_every_region_full_weight_image_wide_does_not() -> None:
    mask = two_regions()
    region = segdec_loss_weights(mask, p=1, w_pos=3, normalisation="region")
    image = segdec_loss_weights(mask, p=1, w_pos=3, normalisation="image")
    assert region[2:22, 2:22].max() == pytest.approx(3) and region[30:34, 30:34].max() == pytest.approx(3)
    assert image[2:22, 2:22].max() == pytest.approx(3) and image[30:34, 30:34].max() == pytest.approx(
        3 * 2 / 10
    )
    np.testing.assert_array_equal(region[~mask], 1) and np.testing.assert_array_equal(image[~mask], 1)
    with pytest.raises(ValueError, match="normalisation must be one of"):
        segdec_loss_weights(mask, p=1, w_pos=3, normalisation="global")
    target, weights = segmentation_targets(mask, (40, 40), 1, True, 1.0, 3.0, "image")
    assert target.shape == weights.shape == (5, 5)


def _sample(tmp_path: Path, mask: np.ndarray, name: str) -> Sample:
    from PIL import Image

    Image.fromarray(np.zeros(mask.shape, np.uint8)).save(tmp_path / f"{name}.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / f"{name}_mask.png")
    return Sample(name, 1, "x", tmp_path / f"{name}.png", f"{name}_mask.png", tmp_path, mask.shape[1],
                  mask.shape[0], "train", True)  # fmt: skip


def test_soft_decision_target_is_the_peak_of_the_downsampled_mask(tmp_path: Path) -> None:
    tiny = np.zeros((128, 64), bool)
    tiny[60:62, 30:32] = True  # 4 pixels: the 17x17 average pool keeps a small fraction
    large = np.zeros((128, 64), bool)
    large[20:100, 10:50] = True
    samples = [_sample(tmp_path, tiny, "tiny"), _sample(tmp_path, large, "large")]
    hard = build("segdec", PARAMS, torch.device("cpu"), seed=0)
    soft = build("segdec", {**PARAMS, "decision_target": "soft"}, torch.device("cpu"), seed=0)
    targets = {s.image_id: soft._targets(s) for s in samples}
    assert hard._decision_targets(samples, targets) == [1.0, 1.0]
    tiny_target, large_target = soft._decision_targets(samples, targets)
    assert 0 < tiny_target < 0.1 and large_target == pytest.approx(1.0)
    unlabelled = soft._decision_targets(samples, {})  # positives without a pixel label keep their image label
    assert unlabelled == [1.0, 1.0]
    with pytest.raises(ValueError, match="decision_target must be one of"):
        build(
            "segdec", {**PARAMS, "decision_target": "fuzzy"}, torch.device("cpu"), seed=0
        )._decision_targets(samples, targets)
