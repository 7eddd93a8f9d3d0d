"""RFL+RIS, MIL, WeCLIP and SeCo on synthetic data with random backbones: RIS retrieval, learning margins, and
pseudo-labels that PAR improves over the raw CAMs. Margins are those measured (see the asserts' comments)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defectbench.data.synthetic.procedural import texture, to_uint8, vary_lighting
from defectbench.experiments import method_params
from defectbench.methods.base import build
from defectbench.methods.image_level import to_tensor
from defectbench.methods.rflris.model import resnet_body
from defectbench.methods.rflris.ris import global_descriptors, select_references
from defectbench.metrics import evaluate, scale_boxes

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")


def test_ris_picks_references_of_the_same_scene_type_first() -> None:
    """Three scene types (textures), five images each: the 4 nearest references of every image are its type."""
    kinds, per_kind = ("weave", "wood", "asphalt"), 5
    rng = np.random.default_rng(0)
    images = [
        to_uint8(vary_lighting(rng, texture(rng, kind, (64, 64)))) for kind in kinds for _ in range(per_kind)
    ]
    images = [np.repeat(im[..., None], 3, axis=2) if im.ndim == 2 else im for im in images]
    body = resnet_body("resnet18", pretrained=False, seed=0).eval()
    descriptors = global_descriptors(body, to_tensor(images, CPU))
    chosen = select_references(descriptors, descriptors, per_kind - 1, exclude=torch.arange(len(images)))
    kind_of = torch.arange(len(images)) // per_kind
    assert (kind_of[chosen] == kind_of[:, None]).all()
    assert not (chosen == torch.arange(len(images))[:, None]).any()  # never itself


def _box_ap(method: str, overrides: dict, samples: dict) -> tuple[float, float, float]:
    """(box AP, I-AUROC, box AP of a constant map) of a demo-scale fit on synthetic RDD2020."""
    model = build(method, method_params(method, "rdd2020", "demo", overrides), CPU, seed=0)
    model.fit(samples["train"])
    predictions = model.predict(samples["test"], (64, 64))
    boxes = [scale_boxes(s.boxes, (s.height, s.width), (64, 64)) for s in samples["test"]]
    labels = np.array([s.label for s in samples["test"]])
    maps = predictions.maps.astype(np.float64)
    metrics = evaluate(predictions.score, labels, maps, None, ["i_auroc", "box_ap"], boxes=boxes)
    constant = evaluate(predictions.score, labels, np.zeros_like(maps), None, ["box_ap"], boxes=boxes)
    return metrics["box_ap"], metrics["i_auroc"], constant["box_ap"]


def test_rfl_box_ap_beats_a_constant_map(synthetic_samples) -> None:
    """Demo scale (40 iterations of 6 images, random ResNet18): RFL localises above a constant map and detects.
    Not asserted: RFL above MIL. Measured at this scale over seeds 0/1 and inputs 64/128: RFL 0.29, 0.27, 0.29,
    0.36 against MIL 0.27, 0.35, 0.27, 0.50 — no reliable order (docs/rflris.md)."""
    samples = synthetic_samples("rdd2020", "rdd_70_30", "rdd2020")
    rfl, rfl_auroc, constant = _box_ap("rflris", {}, samples)
    # measured (seed 0): box AP 0.289 against 0.26 of a constant map; I-AUROC 0.93
    assert rfl > constant + 0.02, (rfl, constant)
    assert rfl_auroc > 0.85


@pytest.mark.parametrize("method", ["weclip", "seco"])
def test_wsss_baselines_fit_predict_and_take_defect_free_images_as_background(
    method: str, synthetic_samples
) -> None:
    """Two iterations, then maps of the evaluation size in [0, 1]; a defect-free image's pseudo-label is all
    background (the original code crashes on it); model.pt round trip gives the same maps."""
    samples = synthetic_samples("visa", "visa_2cls_highshot", "candle", image_size=(48, 64))
    params = method_params(
        method, "visa", "demo", {"iterations": 2, "log_every": 1, "lig_start": 0, "seg_start": 0}
    )
    model = build(method, params, CPU, seed=0)
    log = model.fit(samples["train"])
    assert len(log) == 2 and all(np.isfinite(row["loss"]) for row in log)
    test = samples["test"][:4]
    predictions = model.predict(test, (48, 64))
    assert predictions.maps.shape == (4, 48, 64)
    assert np.all((predictions.maps >= 0) & (predictions.maps <= 1)) and np.isfinite(predictions.score).all()
    normal = [s for s in samples["train"] if s.label == 0][:2]
    images = to_tensor([s.read_image(model.size) for s in normal], CPU)
    pseudo = model.pseudo_labels(images, torch.zeros(2))[1]
    assert (pseudo == 0).all()
    again = build(method, params, CPU, seed=0)
    again.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(again.predict(test, (48, 64)).maps, predictions.maps)
