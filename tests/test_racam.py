"""RA-CAM (racam paper): FGBP, RA-CAM against a hand computation, Otsu pseudo-masks, and a small learning check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from defectbench.data.samples import Sample
from defectbench.methods.backbones import imagenet_normalize
from defectbench.methods.base import build
from defectbench.methods.racam import cam_maps, filter_gradient, filtering_guided_backprop
from defectbench.methods.racam.classifier import StagedClassifier
from defectbench.methods.segnet import pseudo_masks
from defectbench.metrics import segmentation_scores

CPU = torch.device("cpu")
CAM_PARAMS = {"cam": "racam", "fgbp": False, "delta": 50.0, "cam_batch_size": 4, "ablation_batch_size": 8}


def test_filter_gradient_zeroes_exactly_the_values_below_delta() -> None:
    grad = torch.tensor([[[[-1.0, 0.2, 0.5], [0.7, 0.49, 3.0]]]])
    kept = filter_gradient(grad, threshold=0.5)
    assert torch.equal(kept, torch.tensor([[[[0.0, 0.0, 0.5], [0.7, 0.0, 3.0]]]]))
    # percentile 50 of the positives {0.2, 0.5, 0.7, 0.49, 3.0} is 0.5: the same values survive
    assert torch.equal(filter_gradient(grad, percentile=50.0), kept)
    with pytest.raises(ValueError, match="exactly one"):
        filter_gradient(grad)


def test_percentile_is_per_feature_map_like_numpy() -> None:
    grad = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grad[1, 2] = -grad[1, 2].abs()  # a map without a positive gradient loses everything
    kept = filter_gradient(grad, percentile=30.0).numpy()
    for n in range(2):
        for c in range(3):
            values = grad[n, c].numpy()
            positives = values[values > 0]
            delta = np.percentile(positives, 30.0) if positives.size else np.inf
            np.testing.assert_array_equal(kept[n, c], np.where(values >= delta, values, 0.0))
    assert not kept[1, 2].any()


def test_fgbp_backward_of_a_leaky_relu_and_restore() -> None:
    layer = nn.Sequential(nn.LeakyReLU(0.1))
    x = torch.tensor([[[[1.0, -2.0, 3.0, -1.0]]]], requires_grad=True)
    upstream = torch.tensor([[[[0.3, 0.9, 0.1, -0.5]]]])
    with filtering_guided_backprop(layer, threshold=0.2):
        out = layer(x)
        out.backward(upstream)
    assert torch.allclose(out, nn.functional.leaky_relu(x, 0.1))
    # (R ≥ δ) keeps 0.3 and 0.9; times the leaky derivative 1 / 0.1
    assert torch.allclose(x.grad, torch.tensor([[[[0.3, 0.09, 0.0, 0.0]]]]))
    x.grad = None
    layer(x).backward(upstream)  # restored: the plain leaky-ReLU gradient
    assert torch.allclose(x.grad, torch.tensor([[[[0.3, 0.09, 0.1, -0.05]]]]))


def _toy_classifier() -> StagedClassifier:
    torch.manual_seed(3)
    stages = [
        nn.Sequential(nn.Conv2d(3, 2, 1), nn.LeakyReLU(0.1)),
        nn.Sequential(nn.Conv2d(2, 2, 1), nn.LeakyReLU(0.1)),
    ]
    model = StagedClassifier(stages, 2)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[0.0, 0.0], [0.8, -0.6]]))
    return model


def _normalise(cam: np.ndarray) -> np.ndarray:
    cam = cam - cam.min()
    return cam / (1e-7 + cam.max())


def test_racam_on_a_toy_network_equals_a_hand_computation() -> None:
    model = _toy_classifier()
    images = torch.randint(
        0, 256, (1, 3, 4, 6), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
    )
    cam = cam_maps(model, images, {**CAM_PARAMS, "target_stages": [1, 2]}, CPU)[0]

    def leaky(z: np.ndarray) -> np.ndarray:
        return np.where(z > 0, z, 0.1 * z)

    def keep_above_median_of_positives(g: np.ndarray) -> np.ndarray:
        out = np.zeros_like(g)
        for k in range(len(g)):
            positives = g[k][g[k] > 0]
            if positives.size:
                out[k] = np.where(g[k] >= np.percentile(positives, 50.0), g[k], 0.0)
        return out

    x = imagenet_normalize(images)[0].double().numpy()  # (3, H, W)
    w1, b1 = (
        p.detach().double().numpy() for p in (model.stages[0][0].weight[:, :, 0, 0], model.stages[0][0].bias)
    )
    w2, b2 = (
        p.detach().double().numpy() for p in (model.stages[1][0].weight[:, :, 0, 0], model.stages[1][0].bias)
    )
    z1 = np.einsum("kc,chw->khw", w1, x) + b1[:, None, None]
    a1 = leaky(z1)
    z2 = np.einsum("kc,chw->khw", w2, a1) + b2[:, None, None]
    a2 = leaky(z2)
    r2 = np.broadcast_to(np.array([0.8, -0.6])[:, None, None] / a2[0].size, a2.shape)  # ∂y/∂A2 through GAP
    g2 = keep_above_median_of_positives(r2)  # Eq. 6 at stage 2 and FGBP (Eq. 5) at its leaky ReLU
    r1 = np.einsum("kc,khw->chw", w2, np.where(z2 > 0, 1.0, 0.1) * g2)
    stage1 = np.maximum((keep_above_median_of_positives(r1) * a1).sum(0), 0)
    stage2 = np.maximum((g2 * a2).sum(0), 0)
    expected = _normalise((_normalise(stage1) + _normalise(stage2)) / 2)
    assert stage1.std() > 0 and stage2.std() > 0
    np.testing.assert_allclose(cam, expected, atol=1e-5)


def test_otsu_pseudo_masks_split_a_bimodal_map_and_skip_normal_images() -> None:
    rng = np.random.default_rng(0)
    truth = np.zeros((2, 20, 10), dtype=bool)
    truth[:, 5:9, 2:6] = True
    maps = np.where(truth, 0.8, 0.2) + rng.normal(0, 0.05, truth.shape)
    masks = pseudo_masks(maps, np.array([1, 0]))
    np.testing.assert_array_equal(masks[0], truth[0])
    assert not masks[1].any()


def _write_dataset(root: Path, count: int, seed: int) -> list[Sample]:
    """KSDD2-like data: tall grey textured strips, half of them with a bright or dark blob or a short scratch."""
    rng = np.random.default_rng(seed)
    height, width = 64, 32
    samples = []
    for index in range(count):
        image = rng.normal(120, 12, (height, width)) + 10 * np.sin(np.arange(width) / 3)[None, :]
        mask = np.zeros((height, width), dtype=bool)
        label = index % 2
        if label:
            cy, cx = rng.integers(8, height - 8), rng.integers(6, width - 6)
            yy, xx = np.mgrid[:height, :width]
            if index % 4 == 1:
                mask = ((yy - cy) / rng.uniform(3, 5)) ** 2 + ((xx - cx) / rng.uniform(2, 4)) ** 2 <= 1
            else:
                mask = (np.abs(xx - cx) <= 1) & (np.abs(yy - cy) <= rng.integers(4, 7))
            image[mask] += rng.choice([-70, 70])
        name = f"{index:05d}"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / f"{name}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / f"{name}_GT.png")
        samples.append(
            Sample(
                name,
                label,
                "defect" if label else "",
                root / f"{name}.png",
                f"{name}_GT.png",
                root,
                width,
                height,
                "train",
                True,
            )
        )
    return samples


def test_racam_pseudo_masks_beat_all_foreground_and_last_stage_gradcam(tmp_path: Path) -> None:
    """A narrow, shallow VGG-style classifier (one conv per stage; random init) trained briefly on image labels:
    VGG16's 13-conv depth does not learn from scratch within the test's budget."""
    train = _write_dataset(tmp_path, 64, seed=0)
    params = {
        "backbone": "vgg16", "pretrained": False, "stage_channels": [8, 16, 16, 16, 16], "convs_per_stage": [1, 1, 1, 1, 1],
        "leaky_slope": 0.01, "lr": 0.03, "momentum": 0.9, "weight_decay": 0.0, "batch_size": 8, "epochs": 12,
        "input_size": [64, 32], "gate": "label", "target_stages": [1, 2, 3, 4, 5], **CAM_PARAMS,
    }  # fmt: skip
    method = build("racam", params, CPU, seed=0)
    log = method.fit(train)
    assert log[-1]["accuracy"] >= 0.75
    gradcam = build("racam", {**params, "cam": "gradcam", "target_stages": [5]}, CPU, seed=0)
    gradcam.upstream = method
    gradcam.fit(train)
    positives = [sample for sample in train if sample.label == 1]
    truth = np.stack([sample.read_mask((64, 32)) for sample in positives])
    labels = np.ones(len(positives), dtype=int)

    def pseudo_iou(model) -> float:
        maps = model.predict(positives, (64, 32)).maps.astype(np.float32)
        return segmentation_scores(pseudo_masks(maps, labels), truth)["iou"]

    racam_iou, gradcam_iou = pseudo_iou(method), pseudo_iou(gradcam)
    all_foreground_iou = segmentation_scores(np.ones_like(truth), truth)["iou"]
    print(
        f"IoU RA-CAM {racam_iou:.3f}, Grad-CAM S5 {gradcam_iou:.3f}, all foreground {all_foreground_iou:.3f}"
    )
    assert racam_iou > all_foreground_iou
    assert racam_iou > gradcam_iou
