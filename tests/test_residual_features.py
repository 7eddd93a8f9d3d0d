"""The shared residual-feature stage: residual semantics, reference retrieval, positional code, the file contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from defectbench.data.images import DataError
from defectbench.data.samples import Sample
from defectbench.experiments import deep_merge
from defectbench.features import (
    ResidualFile,
    compute_residual_features,
    feature_settings,
    load_residual_model,
)
from defectbench.features.residual import ResidualModel, positional_code
from defectbench.features.store import write_residual_file

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def texture(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A striped texture with noise: every instance alike, none identical."""
    x = np.mgrid[0:size, 0:size][1]
    phase = rng.uniform(0, 2 * np.pi)
    base = 120 + 60 * np.sin(x / 3.0 + phase) + rng.normal(0, 6, (size, size))
    return np.repeat(np.clip(base, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def sample(tmp: Path, name: str, image: np.ndarray, subset: str, label: int = 0) -> Sample:
    path = tmp / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return Sample(name, label, "good" if not label else "pasted", path, "", tmp, image.shape[1], image.shape[0],
                  subset, False)  # fmt: skip


def settings(**overrides: object) -> dict:
    return deep_merge(feature_settings("weakrest", "mvtec_ad", "carpet", "demo"), overrides)


@pytest.fixture
def normal_train(tmp_path: Path) -> list[Sample]:
    rng = np.random.default_rng(0)
    return [sample(tmp_path, f"train/{i:03d}", texture(rng), "train") for i in range(8)]


def test_identical_image_has_near_zero_residual(tmp_path: Path, normal_train: list[Sample]) -> None:
    copy = sample(tmp_path, "test/copy", normal_train[3].read_image(), "test")
    other = sample(tmp_path, "test/other", texture(np.random.default_rng(9)), "test")
    config = settings(coreset_fraction=1.0)
    dest = compute_residual_features(tmp_path / "r.npz", {"train": normal_train, "test": [copy, other]}, config,
                                     CPU, "split.csv")  # fmt: skip
    stored = ResidualFile(dest, config)
    same, different = np.abs(stored.get(["test/copy", "test/other"])).reshape(2, -1).max(axis=1)
    assert same < 1e-2 * different
    assert (
        stored.arrays["references"][stored.rows(["test/copy"])[0], 0] == 3
    )  # itself, allowed for a test image


def test_pasted_defect_has_the_largest_residual_inside_its_mask(
    tmp_path: Path, normal_train: list[Sample]
) -> None:
    image = texture(np.random.default_rng(5))
    image[24:40, 32:48] = [250, 40, 40]
    defect = sample(tmp_path, "test/defect", image, "test", label=1)
    config = settings()
    dest = compute_residual_features(tmp_path / "r.npz", {"train": normal_train, "test": [defect]}, config, CPU,
                                     "split.csv")  # fmt: skip
    norms = np.linalg.norm(
        ResidualFile(dest, config).get(["test/defect"])[0], axis=-1
    )  # (8, 8) blocks of 8 px
    row, col = np.unravel_index(np.argmax(norms), norms.shape)
    assert 24 // 8 <= row < 40 // 8 and 32 // 8 <= col < 48 // 8


def test_positional_code_changes_the_match_on_mirrored_halves() -> None:
    """A patch equal to its mirror image in the other half matches the mirror without the code, itself with it."""
    grid, dims = (4, 8), 16
    rng = np.random.default_rng(0)
    right = torch.from_numpy(rng.normal(size=(grid[0], grid[1] // 2, dims))).float()
    mirrored = torch.cat([right.flip(1), right], dim=1)  # left half = mirror image of the right half
    reference = mirrored.clone()
    reference[:, : grid[1] // 2] += 0.05  # the reference's left half differs slightly
    query = mirrored[1, 1]  # a left-half patch, equal to its mirror at column 6
    for weight, expected_column in ((0.0, grid[1] - 1 - 1), (1.0, 1)):
        code = positional_code(*grid, dims)
        bank = (reference + weight * code).reshape(-1, dims)
        found = int(torch.cdist((query + weight * code[1, 1])[None], bank).argmin())
        assert divmod(found, grid[1]) == (1, expected_column)


def test_retrieval_returns_the_image_itself_first_unless_excluded(normal_train: list[Sample]) -> None:
    config = settings(coreset_fraction=1.0, retrieval={"k": 5})
    model = ResidualModel(config, CPU)
    images = np.stack([s.read_image() for s in normal_train])
    model.fit([images], len(images), (8, 8))
    _, allowed = model.residuals(images[[2, 6]])
    _, excluded = model.residuals(images[[2, 6]], exclude=[2, 6])
    assert list(allowed[:, 0]) == [2, 6]
    assert 2 not in excluded[0] and 6 not in excluded[1] and excluded.shape == (2, 5)


def test_consumer_recomputes_the_stored_residuals(tmp_path: Path, normal_train: list[Sample]) -> None:
    """A consumer restoring the model from the file gets the residuals the stage stored (synthetic anomalies)."""
    config = settings()
    dest = compute_residual_features(tmp_path / "r.npz", {"train": normal_train}, config, CPU, "split.csv")
    stored = ResidualFile(dest, config)
    model = load_residual_model(stored, CPU)
    images = np.stack([s.read_image() for s in normal_train[:3]])
    residuals, references = model.residuals(images, exclude=[0, 1, 2])
    np.testing.assert_allclose(
        residuals, stored.get([s.image_id for s in normal_train[:3]]), atol=2e-2, rtol=1e-2
    )
    assert all(i not in refs for i, refs in enumerate(references))


def test_file_from_other_settings_is_refused_naming_the_file(
    tmp_path: Path, normal_train: list[Sample]
) -> None:
    dest = compute_residual_features(
        tmp_path / "r.npz", {"train": normal_train}, settings(), CPU, "split.csv"
    )
    with pytest.raises(DataError, match=r"r\.npz was computed with other settings.*stride"):
        ResidualFile(dest, settings(stride=4))
    with pytest.raises(DataError, match=r"r\.npz has no residuals for \['test/x'\]"):
        ResidualFile(dest, settings()).get(["test/x"])
    dest.write_bytes(dest.read_bytes()[:1000])  # truncated
    with pytest.raises(DataError, match=r"r\.npz is not a readable residual file"):
        ResidualFile(dest, settings())


def test_image_size_not_divisible_by_the_stride(tmp_path: Path, normal_train: list[Sample]) -> None:
    odd = sample(tmp_path, "test/odd", texture(np.random.default_rng(1), size=60), "test")
    rng = np.random.default_rng(2)
    train = [sample(tmp_path, f"t/{i}", texture(rng, size=60), "train") for i in range(3)]
    with pytest.raises(DataError, match=r"t/0\.png is 60x60 px, not divisible by the residual stride 8"):
        compute_residual_features(tmp_path / "r.npz", {"train": train, "test": [odd]}, settings(input_size=None),
                                  CPU, "split.csv")  # fmt: skip
    with pytest.raises(DataError, match=r"config/features\.yaml: input_size \[60, 60\]"):
        compute_residual_features(tmp_path / "r.npz", {"train": normal_train}, settings(input_size=[60, 60]), CPU,
                                  "split.csv")  # fmt: skip
    assert not (tmp_path / "r.npz").exists()


def test_category_without_normal_training_images(tmp_path: Path) -> None:
    defect = sample(tmp_path, "train/bad", texture(np.random.default_rng(0)), "train", label=1)
    with pytest.raises(DataError, match=r"splits/x\.csv has no normal training images"):
        compute_residual_features(tmp_path / "r.npz", {"train": [defect]}, settings(), CPU, "splits/x.csv")
    assert not (tmp_path / "r.npz").exists()


def test_nothing_half_written(tmp_path: Path) -> None:
    def failing():
        yield np.zeros((2, 8, 8, 4), np.float16)
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        write_residual_file(
            tmp_path / "r.npz", {"a": 1}, {"image_id": np.array(["x"] * 4)}, (4, 8, 8, 4), failing()
        )
    assert list(tmp_path.iterdir()) == []
