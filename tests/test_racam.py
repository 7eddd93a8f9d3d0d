"""RA-CAM (racam paper): FGBP, RA-CAM against a hand computation, Otsu pseudo-masks, and a learning check on
synthetic KSDD2 at the demo's settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from defectbench.experiments import method_params
from defectbench.methods.backbones import imagenet_normalize
from defectbench.methods.base import build
from defectbench.methods.racam import (
    RegionAwareCAMMethod,
    cam_maps,
    filter_gradient,
    filtering_guided_backprop,
)
from defectbench.methods.racam.classifier import StagedClassifier
from defectbench.methods.segnet import pseudo_masks
from defectbench.metrics import segmentation_scores, threshold_maps

CPU = torch.device("cpu")
CAM_PARAMS = {
    "cam": "racam", "fgbp": False, "delta": 50.0, "stage_fusion": "geometric", "cam_batch_size": 4,
    "ablation_batch_size": 8,
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    assert stage1.std() > 0 and stage2.std() > 0
    geometric = _normalise(np.sqrt(_normalise(stage1) * _normalise(stage2)))
    np.testing.assert_allclose(cam, geometric, atol=1e-5)
    mean_params = {**CAM_PARAMS, "target_stages": [1, 2], "stage_fusion": "mean"}
    mean = _normalise((_normalise(stage1) + _normalise(stage2)) / 2)
    np.testing.assert_allclose(cam_maps(model, images, mean_params, CPU)[0], mean, atol=1e-5)


def test_otsu_pseudo_masks_split_a_bimodal_map_and_skip_normal_images() -> None:
    rng = np.random.default_rng(0)
    truth = np.zeros((2, 20, 10), dtype=bool)
    truth[:, 5:9, 2:6] = True
    maps = np.where(truth, 0.8, 0.2) + rng.normal(0, 0.05, truth.shape)
    masks = pseudo_masks(maps, np.array([1, 0]))
    np.testing.assert_array_equal(masks[0], truth[0])
    assert not masks[1].any()


def test_racam_pseudo_masks_beat_all_foreground_and_last_stage_gradcam(synthetic_samples) -> None:
    """Synthetic KSDD2 at the demo's settings (config/methods/racam.yaml): the classifier trained on image labels,
    then Otsu pseudo-masks of the test defects. The fused stage maps must outline the small defects, far better
    than a mask of the whole image and than Grad-CAM on the coarse last stage."""
    subsets = synthetic_samples("ksdd2", "official", "ksdd2")
    params = method_params("racam", "ksdd2", "demo", {"cam": "racam", "delta": 50})
    method = build("racam", params, CPU, seed=0)
    log = method.fit(subsets["train"])
    assert log[-1]["accuracy"] >= 0.9
    gradcam = build("racam", {**params, "cam": "gradcam", "target_stages": [5]}, CPU, seed=0)
    gradcam.upstream = method
    gradcam.fit(subsets["train"])
    positives = [sample for sample in subsets["test"] if sample.label == 1]
    eval_size = (176, 64)
    truth = np.stack([sample.read_mask(eval_size) for sample in positives])

    def pseudo_iou(model: RegionAwareCAMMethod) -> float:
        maps = model.predict(positives, eval_size).maps.astype(np.float32)
        return segmentation_scores(threshold_maps(maps, "otsu"), truth)["iou"]

    racam_iou, gradcam_iou = pseudo_iou(method), pseudo_iou(gradcam)
    all_foreground_iou = segmentation_scores(np.ones_like(truth), truth)["iou"]
    print(
        f"IoU RA-CAM {racam_iou:.3f}, Grad-CAM S5 {gradcam_iou:.3f}, all foreground {all_foreground_iou:.3f}"
    )
    assert racam_iou > 10 * all_foreground_iou
    assert racam_iou > 0.3
    assert racam_iou > 3 * gradcam_iou
