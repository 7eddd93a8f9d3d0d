"""SegDecNet (method `segdec`): architecture, gradient-flow adjustment, loss weights, sampler, resume, learning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from defectbench.data.images import DataError
from defectbench.data.samples import Sample
from defectbench.data.synthetic import synthesize
from defectbench.methods.base import build
from defectbench.methods.segdec import (
    NegativeSampler,
    SegDecNet,
    downsample,
    loss_weights,
    segdec_loss,
    segmentation_targets,
)
from defectbench.metrics import average_precision

FAST = {
    "channels": 3, "volume_channels": 32, "epochs": 2, "lr": 0.01, "delta": 1.0, "batch_size": 2, "dilate": 3,
    "p": 2.0, "w_pos": 3.0, "dynamic_balancing": True, "gradient_adjustment": True, "distance_transform": True,
    "frequency_sampling": True, "checkpoint_every": 1, "decision_target": "hard", "dt_normalisation": "region",
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_output_shapes_and_decision_head() -> None:
    torch.manual_seed(0)
    net = SegDecNet(in_channels=1)
    decision, seg = net(torch.rand(2, 1, 128, 192))
    assert decision.shape == (2,)
    assert seg.shape == (2, 1, 16, 24)  # output stride 8
    assert net.classifier.in_features == 66
    assert net.decision[1][0].in_channels == 1025
    assert net.segmentation[-1][0].kernel_size == (15, 15)
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.rand(1, 1, 130, 128))


@pytest.mark.parametrize("adjust", [True, False])
def test_gradient_flow_adjustment(adjust: bool) -> None:
    torch.manual_seed(0)
    net = SegDecNet(in_channels=1, volume_channels=16)
    net.gradient_factor = 0.0 if adjust else 1.0
    decision, _ = net(torch.rand(2, 1, 128, 128))
    decision.sum().backward()  # the decision loss alone
    seg_grads = [p.grad for p in [*net.segmentation.parameters(), *net.seg_head.parameters()]]
    reached = any(g is not None and g.abs().sum() > 0 for g in seg_grads)
    assert reached is not adjust
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.classifier.parameters())


def test_loss_weights_on_hand_made_mask() -> None:
    mask = np.zeros((64, 64), bool)
    mask[24:40, 8:56] = True  # a 16-pixel-high bar
    target, weights = segmentation_targets(
        mask, (64, 64), dilation=1, distance_transform=True, p=2.0, w_pos=3.0
    )
    assert target.shape == weights.shape == (8, 8)
    assert target[0].max() == 0 and target[4, 4] == pytest.approx(
        16 / 17
    )  # rows 24..40 of which 16 defective
    assert weights[0].tolist() == [1.0] * 8  # negatives weigh 1
    full = segmentation_targets(mask, (64, 64), 1, True, 2.0, 3.0)
    # before downsampling: centre rows of the bar weigh w_pos, the edge row w_pos * (1/8)^2
    from defectbench.data.weak_labels import segdec_loss_weights

    pixel = segdec_loss_weights(mask, p=2.0, w_pos=3.0)
    assert pixel[31, 30] == pytest.approx(3.0) and pixel[24, 30] == pytest.approx(3.0 / 64)
    assert np.allclose(full[1], downsample(pixel), atol=1e-6)
    plain = segmentation_targets(mask, (64, 64), 1, False, 2.0, 3.0)[1]
    assert np.all(plain == 1.0)
    dilated = segmentation_targets(mask, (64, 64), 7, True, 2.0, 3.0)[0]
    assert dilated.sum() > target.sum()


def test_downsample_is_reflect_pad_and_17x17_average() -> None:
    maps = np.zeros((32, 32), np.float32)
    maps[:, :16] = 1.0
    small = downsample(maps)
    assert small.shape == (4, 4)
    assert small[0, 0] == pytest.approx(1.0) and small[0, 3] == pytest.approx(0.0)
    assert small[0, 2] == pytest.approx(8 / 17)  # window of columns 8..24: 8 of its 17 columns are ones


def test_loss_balancing_and_gamma() -> None:
    assert loss_weights(0, 10, 0.5, True) == (1.0, 0.0)
    assert loss_weights(5, 10, 0.5, True) == (0.5, 0.25)
    assert loss_weights(5, 10, 0.5, False) == (1.0, 0.5)
    seg = torch.zeros(2, 1, 4, 4)
    targets = torch.ones(2, 1, 4, 4)
    total, seg_terms, dec_terms = segdec_loss(
        torch.zeros(2),
        seg,
        torch.ones(2),
        targets,
        torch.ones_like(targets),
        torch.tensor([1.0, 0.0]),
        0.5,
        0.25,
    )
    assert seg_terms[1] == 0 and seg_terms[0] == pytest.approx(np.log(2))  # gamma = 0: no segmentation loss
    assert dec_terms.tolist() == pytest.approx([np.log(2)] * 2)  # every image keeps its decision loss
    assert total.item() == pytest.approx(0.5 * np.log(2) + 0.25 * 2 * np.log(2))


def test_sampler_uses_negatives_equally_and_balances_epochs() -> None:
    sampler = NegativeSampler(50, np.random.default_rng(0))
    for _ in range(100):
        chosen = sampler.draw(7)
        assert len(chosen) == 7 and len(set(chosen.tolist())) == 7  # as many negatives as positives, distinct
    assert sampler.counts.sum() == 700
    spread = sampler.counts.max() - sampler.counts.min()
    assert spread <= 3  # 14 uses each on average
    uniform = NegativeSampler(50, np.random.default_rng(0), frequency_aware=False)
    for _ in range(100):
        uniform.draw(7)
    assert uniform.counts.max() - uniform.counts.min() >= 2 * spread
    assert len(NegativeSampler(3, np.random.default_rng(0)).draw(5)) == 3  # fewer negatives than positives


def _ksdd2_samples(root: Path, split: str) -> list[Sample]:
    """Samples of a synthetic KolektorSDD2 folder, read straight from its layout (`<id>.png`, `<id>_GT.png`)."""
    samples = []
    for image in sorted((root / split).glob("*.png")):
        if image.stem.endswith("_GT") or "copy" in image.stem:
            continue
        mask_ref = f"{split}/{image.stem}_GT.png"
        label = int(np.asarray(Image.open(root / mask_ref)).any())
        width, height = Image.open(image).size
        samples.append(
            Sample(
                f"{split}/{image.stem}", label, "", image, mask_ref, root, width, height, split, bool(label)
            )
        )
    return samples


@pytest.fixture(scope="module")
def ksdd2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Sample]]:
    root = synthesize(
        "ksdd2", tmp_path_factory.mktemp("ksdd2") / "data", seed=0,
        n_train_pos=12, n_train_neg=24, n_test_pos=12, n_test_neg=24, image_size=(128, 64),
        defect_contrast=1.0,  # clearly visible defects: does it learn at all (the demo's faint ones: its trend)
    )  # fmt: skip
    return {"train": _ksdd2_samples(root, "train"), "test": _ksdd2_samples(root, "test")}


def test_resume_equals_uninterrupted(
    ksdd2: dict[str, list[Sample]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = {**FAST, "input_size": [128, 64], "volume_channels": 16, "epochs": 3}
    train = ksdd2["train"][:9]
    full = build("segdec", params, torch.device("cpu"), seed=3)
    full.fit(train)

    def crash_in_last_epoch(epoch: int, *args: object) -> tuple[float, float]:
        if epoch == 2:
            raise KeyboardInterrupt("simulated crash")
        return loss_weights(epoch, *args)

    monkeypatch.setattr("defectbench.methods.segdec.method.loss_weights", crash_in_last_epoch)
    crashed = build("segdec", params, torch.device("cpu"), seed=3, workdir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        crashed.fit(train)  # checkpoints after epochs 1 and 2, then dies in the third
    monkeypatch.undo()
    resumed = build("segdec", params, torch.device("cpu"), seed=3, workdir=tmp_path)
    log = resumed.fit(train)
    assert [row["epoch"] for row in log] == [0, 1, 2]
    for key, value in full.state_dict()["model"].items():
        assert torch.equal(value, resumed.state_dict()["model"][key]), key


def test_learns_on_synthetic_ksdd2(ksdd2: dict[str, list[Sample]]) -> None:
    """Full supervision reaches AP >= 0.9; image labels only (N = 0) beat chance clearly."""
    test = ksdd2["test"]
    labels = np.array([s.label for s in test])
    base = {**FAST, "input_size": [128, 64], "epochs": 5, "batch_size": 1}
    full = build("segdec", base, torch.device("cpu"), seed=1337)
    full.fit(ksdd2["train"])
    predictions = full.predict(test, eval_size=(128, 64))
    assert predictions.maps.shape == (len(test), 128, 64) and predictions.maps.dtype == np.float16
    assert average_precision(labels, predictions.score) >= 0.9

    weak_train = [Sample(**{**s.__dict__, "pixel_label": False}) for s in ksdd2["train"]]
    weak = build("segdec", {**base, "dynamic_balancing": False}, torch.device("cpu"), seed=1337)
    weak.fit(weak_train)
    weak_ap = average_precision(labels, weak.predict(test, eval_size=(128, 64)).score)
    assert weak_ap > labels.mean() + 0.2


def test_best_model_on_validation(ksdd2: dict[str, list[Sample]]) -> None:
    """Severstal mode: validation AP every `val_every` epochs, and the best-scoring weights are kept."""
    params = {**FAST, "input_size": [128, 64], "epochs": 3, "val_every": 1, "select_best_on_val": True}
    val = ksdd2["test"][::3]
    method = build("segdec", params, torch.device("cpu"), seed=5)
    log = method.fit(ksdd2["train"][:9], val)
    logged = [row["val_ap"] for row in log]
    assert not np.isnan(logged).any()
    final_ap = average_precision(np.array([s.label for s in val]), method.predict(val, (128, 64)).score)
    assert final_ap == pytest.approx(max(logged))
    with pytest.raises(DataError, match="validation"):
        build("segdec", params, torch.device("cpu"), seed=5).fit(ksdd2["train"][:9], None)
