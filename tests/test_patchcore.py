"""PatchCore: coreset, nearest neighbours, and learning on synthetic MVTec-format data with random weights."""

import numpy as np
import torch

from defectbench.experiments import method_params
from defectbench.methods.base import build
from defectbench.methods.memory import NearestNeighbours, greedy_coreset, local_patch_features
from defectbench.metrics import i_auroc, p_auroc


def test_greedy_coreset_picks_spread_points() -> None:
    cluster = torch.randn(200, 16) * 0.01
    outliers = torch.eye(16)[:4] * 10
    chosen = greedy_coreset(
        torch.cat([cluster, outliers]), fraction=5 / 204, projection_dims=0, start_points=3, seed=0
    )
    assert set(range(200, 204)) <= set(chosen.tolist())  # the far points are covered first
    assert len(set(chosen.tolist())) == len(chosen) == 5


def test_nearest_neighbours_are_exact() -> None:
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(50, 8)), rng.normal(size=(20, 8))
    distances, indices = NearestNeighbours(bank).search(queries)
    brute = np.linalg.norm(queries[:, None] - bank[None], axis=2)
    np.testing.assert_array_equal(indices[:, 0], brute.argmin(1))
    np.testing.assert_allclose(distances[:, 0], brute.min(1), rtol=1e-4)


def test_local_patch_features_shape_and_locality() -> None:
    layer2, layer3 = torch.randn(2, 32, 8, 8), torch.randn(2, 64, 4, 4)
    features = local_patch_features([layer2, layer3], patch_size=3, dims=40, out_dims=24)
    assert features.shape == (2, 8, 8, 24)
    changed = layer2.clone()
    changed[0, :, 0, 0] += 100.0  # a change at one location moves only its 3×3 neighbourhood
    diff = (local_patch_features([changed, layer3], 3, 40, 24) - features).abs().sum(-1)[0]
    assert diff[:2, :2].min() > 0 and diff[3:, :].max() == 0 and diff[:, 3:].max() == 0


def test_patchcore_beats_chance_with_random_weights(synthetic_samples) -> None:
    subsets = synthetic_samples("mvtec_ad", "unsupervised", "carpet", categories=["carpet"], image_size=64)
    params = method_params("patchcore", "mvtec_ad", "demo")
    method = build("patchcore", params, torch.device("cpu"), seed=0)
    method.fit(subsets["train"])
    test = subsets["test"]
    predictions = method.predict(test, (64, 64))
    labels = np.array([s.label for s in test])
    masks = np.stack([s.read_mask((64, 64)) for s in test])
    assert (
        predictions.maps.shape == (len(test), 64, 64) and predictions.maps.dtype == np.float32
    )  # unbounded distances
    assert i_auroc(labels, predictions.score) > 0.8
    assert p_auroc(predictions.maps, masks) > 0.8
