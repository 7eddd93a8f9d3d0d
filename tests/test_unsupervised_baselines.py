"""SegDecNet's unsupervised baselines (section 4.5): Uninformed Students and f-AnoGAN — shapes, the image score,
the gradient penalty, window accumulation, learning on synthetic KolektorSDD2, and exact resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from defectbench.data.indexers import index_dataset
from defectbench.data.samples import Sample, load_samples
from defectbench.data.splits import make_split
from defectbench.data.synthetic import synthesize
from defectbench.methods.base import build
from defectbench.methods.fanogan import (
    Critic,
    Encoder,
    Generator,
    gather_patches,
    gradient_penalty,
    sample_positions,
    sliding_windows,
    window_pixel_map,
)
from defectbench.methods.fanogan import method as fanogan_method
from defectbench.methods.fanogan.model import resample_blocks
from defectbench.methods.uninformed_students import (
    DenseTeacher,
    PatchStudent,
    ensemble_scores,
    segdec_image_score,
)
from defectbench.metrics import auroc

SIZE = (128, 64)
US_PARAMS = {
    "input_size": list(SIZE), "channels": 3, "teacher_backbone": "resnet18", "teacher_layer": 2,
    "pretrained": False, "n_students": 3, "student_width": 16, "epochs": 3, "lr": 1e-3, "weight_decay": 1e-5,
    "batch_size": 8, "patch_pool": 21, "checkpoint_every": 1,
}  # fmt: skip
FANOGAN_PARAMS = {
    "input_size": list(SIZE), "channels": 3, "patch_size": 32, "patches_per_image": 16, "z_dim": 16, "dim": 8,
    "batch_size": 32, "critic_iters": 5, "gp_lambda": 10.0, "gan_lr": 1e-4, "gan_betas": [0.0, 0.9],
    "gan_epochs": 1, "encoder_lr": 5e-5, "encoder_iterations": 20, "kappa": 1.0, "stride": 8, "score_batch": 256,
    "checkpoint_every": 1,
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ksdd2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Sample]]:
    """Synthetic KolektorSDD2 through the real pipeline: index, SegDecNet N = 0 split, samples."""
    folder = tmp_path_factory.mktemp("ksdd2")
    root = synthesize(
        "ksdd2", folder / "data", seed=0,
        n_train_pos=6, n_train_neg=24, n_test_pos=10, n_test_neg=16, image_size=SIZE,
        defect_contrast=1.0,  # clearly visible defects, not the demo's faint ones
    )  # fmt: skip
    manifest = index_dataset("ksdd2", root, check_counts=False)
    split = make_split("ksdd2", "segdec_n0", manifest, synthetic=True, seed=0)
    manifest.to_csv(folder / "manifest.csv", index=False)
    split.to_csv(folder / "split.csv", index=False)
    return load_samples(folder / "manifest.csv", folder / "split.csv", root, "ksdd2")


# --- Uninformed Students ----------------------------------------------------------------------------------------


def test_student_and_teacher_share_the_stride_8_grid() -> None:
    images = torch.rand(2, 3, 64, 96)
    teacher = DenseTeacher("resnet18", 2, pretrained=False, seed=0)
    student = PatchStudent(3, 8, teacher.channels)
    assert teacher(images).shape == student(images).shape == (2, 128, 8, 12)
    with pytest.raises(ValueError, match="stride"):
        DenseTeacher("resnet18", 3, pretrained=False, seed=0)


def test_ensemble_error_and_variance() -> None:
    target = torch.zeros(1, 2, 1, 1)
    agreeing = torch.ones(3, 1, 2, 1, 1)
    error, variance = ensemble_scores(agreeing, target)
    assert error.item() == pytest.approx(2.0) and variance.item() == pytest.approx(0.0)
    spread = torch.tensor([[1.0, 0.0], [-1.0, 0.0]]).view(
        2, 1, 2, 1, 1
    )  # mean 0, per-channel variance (1, 0)
    error, variance = ensemble_scores(spread, target)
    assert error.item() == pytest.approx(0.0) and variance.item() == pytest.approx(1.0)


def test_segdec_image_score_on_hand_made_map() -> None:
    pixels = torch.ones(1, 40, 40)
    pixels[0, 5:26, 10:31] = 5.0  # one 21x21 block: the best 21x21 patch averages exactly 5
    mean = 1.0 + 4.0 * 21 * 21 / 1600
    assert segdec_image_score(pixels, 21).item() == pytest.approx(5.0 / (1.0 + mean))
    spread = torch.ones(1, 40, 40)
    spread[0, ::2, ::2] = 5.0  # same maximum pixel, no dense patch: lower score
    assert segdec_image_score(spread, 21).item() < segdec_image_score(pixels, 21).item()


def test_uninformed_students_learns_and_round_trips(ksdd2: dict[str, list[Sample]]) -> None:
    method = build("uninformed_students", US_PARAMS, torch.device("cpu"), seed=0)
    log = method.fit(ksdd2["train"])
    assert len(log) == US_PARAMS["epochs"] and log[-1]["loss"] < log[0]["loss"]
    assert log[0]["train_images"] == sum(s.label == 0 for s in ksdd2["train"])  # positives are ignored
    predictions = method.predict(ksdd2["test"], (64, 32))
    assert predictions.maps.shape == (len(ksdd2["test"]), 64, 32)
    labels = np.array([s.label for s in ksdd2["test"]])
    assert auroc(labels, predictions.score) > 0.6
    restored = build("uninformed_students", US_PARAMS, torch.device("cpu"), seed=1)
    restored.load_state_dict(method.state_dict())
    assert np.array_equal(restored.predict(ksdd2["test"][:3], (64, 32)).score, predictions.score[:3])


# --- f-AnoGAN ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("patch", [32, 64])
def test_fanogan_network_shapes(patch: int) -> None:
    blocks = resample_blocks(patch)
    generator, critic, encoder = Generator(16, 4, patch, 1), Critic(4, patch, 1), Encoder(16, 4, patch, 1)
    fake = generator(torch.randn(2, 16))
    assert fake.shape == (2, 1, patch, patch) and fake.abs().max() <= 1.0
    value, features = critic(fake)
    assert value.shape == (2,) and features.shape == (2, 4 * 8 * 16)
    assert encoder(fake).shape == (2, 16)
    assert len(critic.blocks) == len(generator.blocks) == blocks == {32: 3, 64: 4}[patch]
    with pytest.raises(ValueError, match="power of two"):
        resample_blocks(48)


def test_gradient_penalty_of_a_linear_critic() -> None:
    weights = torch.tensor([0.5, -2.0, 1.0, 0.0]).view(1, 1, 2, 2)

    def linear(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (x * weights).flatten(1).sum(dim=1), x.flatten(1)

    real, fake = torch.rand(3, 1, 2, 2), torch.rand(3, 1, 2, 2)
    penalty, gradients = gradient_penalty(linear, real, fake, torch.rand(3))
    assert torch.allclose(gradients, weights.expand(3, -1, -1, -1))  # ∇<w, x> = w at every interpolate
    assert penalty.item() == pytest.approx((weights.norm().item() - 1.0) ** 2, rel=1e-5)


def test_gradient_penalty_reaches_the_critic() -> None:
    torch.manual_seed(0)
    critic = Critic(4, 32, 1)
    penalty, gradients = gradient_penalty(
        critic, torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32), torch.rand(4)
    )
    assert gradients.abs().sum() > 0 and penalty.item() > 0
    penalty.backward()  # double backward: the penalty trains the critic
    weights = [p for name, p in critic.named_parameters() if name.endswith("weight")]  # ∇x is blind to biases
    assert all(p.grad is not None for p in weights) and critic.input.weight.grad.abs().sum() > 0


def test_window_accumulation_equals_a_loop() -> None:
    height, width, patch, stride = 13, 10, 8, 3
    image = torch.rand(2, height, width)
    windows, grid = sliding_windows(image, patch, stride)
    assert grid == (5, 4) and windows.shape == (20, 2, patch, patch)
    top = left = 2 * stride - patch // 2  # window (2, 2), centred at pixel (6, 6), lies inside: a plain crop
    assert torch.equal(windows[2 * grid[1] + 2], image[:, top : top + patch, left : left + patch])
    assert torch.equal(windows[0][:, patch // 2 :, patch // 2 :], image[:, : patch // 2, : patch // 2])
    scores = torch.rand(grid, dtype=torch.float64)
    sums, counts = (
        torch.zeros(height, width, dtype=torch.float64),
        torch.zeros(height, width, dtype=torch.float64),
    )
    for i in range(grid[0]):
        for j in range(grid[1]):
            rows = slice(max(0, i * stride - patch // 2), min(height, i * stride - patch // 2 + patch))
            cols = slice(max(0, j * stride - patch // 2), min(width, j * stride - patch // 2 + patch))
            sums[rows, cols] += scores[i, j]
            counts[rows, cols] += 1
    assert counts.min() > 0
    assert torch.allclose(window_pixel_map(scores, patch, stride, (height, width)), sums / counts)


def test_patches_are_gathered_where_sampled() -> None:
    images = torch.randint(0, 256, (3, 2, 20, 24), dtype=torch.uint8)
    positions = sample_positions(3, (20, 24), 8, per_image=5, seed=0)
    assert positions.shape == (15, 3) and positions[:, 1].max() <= 12 and positions[:, 2].max() <= 16
    patches = gather_patches(images, positions, 8)
    index, top, left = positions[7].tolist()
    expected = images[index, :, top : top + 8, left : left + 8].float() / 127.5 - 1.0
    assert patches.shape == (15, 2, 8, 8) and torch.equal(patches[7], expected)


def test_fanogan_learns_on_synthetic_ksdd2(ksdd2: dict[str, list[Sample]]) -> None:
    method = build("fanogan", FANOGAN_PARAMS, torch.device("cpu"), seed=0)
    log = method.fit(ksdd2["train"])
    assert not np.isnan(log[0]["critic_loss"]) and not np.isnan(log[-1]["encoder_loss"])
    predictions = method.predict(ksdd2["test"], SIZE)
    assert predictions.maps.shape == (len(ksdd2["test"]), *SIZE)
    labels = np.array([s.label for s in ksdd2["test"]])
    assert auroc(labels, predictions.score) > 0.6


class Interrupted(Exception):
    pass


def test_fanogan_resume_equals_uninterrupted(
    ksdd2: dict[str, list[Sample]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = {**FANOGAN_PARAMS, "gan_epochs": 2, "patches_per_image": 8, "encoder_iterations": 8}
    train = ksdd2["train"]
    reference = build("fanogan", params, torch.device("cpu"), seed=0, workdir=tmp_path / "straight")
    reference.fit(train)

    def fail_after(calls: int, function):  # raise on call number `calls` + 1
        count = {"n": 0}

        def wrapped(*args, **kwargs):
            count["n"] += 1
            if count["n"] > calls:
                raise Interrupted
            return function(*args, **kwargs)

        return wrapped

    workdir = tmp_path / "resumed"
    # 1st attempt dies inside the second GAN epoch, the 2nd inside the first encoder epoch, the 3rd finishes.
    steps_per_pass = sum(s.label == 0 for s in train) * params["patches_per_image"] // params["batch_size"]
    with monkeypatch.context() as patch:
        patch.setattr(fanogan_method, "gradient_penalty", fail_after(steps_per_pass + 1, gradient_penalty))
        with pytest.raises(Interrupted):
            build("fanogan", params, torch.device("cpu"), seed=0, workdir=workdir).fit(train)
    with monkeypatch.context() as patch:
        patch.setattr(fanogan_method, "anomaly_scores", fail_after(1, fanogan_method.anomaly_scores))
        with pytest.raises(Interrupted):
            build("fanogan", params, torch.device("cpu"), seed=0, workdir=workdir).fit(train)
    resumed = build("fanogan", params, torch.device("cpu"), seed=0, workdir=workdir)
    log = resumed.fit(train)
    assert [row["epoch"] for row in log] == list(range(len(log))) and len(log) > params["gan_epochs"]
    for name, state in reference.state_dict().items():
        for key, value in state.items():
            assert torch.equal(value, resumed.state_dict()[name][key]), f"{name}.{key} differs after resume"
