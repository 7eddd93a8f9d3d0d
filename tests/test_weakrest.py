"""WeakREST learns: on synthetic MVTec-format data with random backbones it beats PatchCore with pixel, block and
box labels, and the LDA foreground separates an object from a flat background. Margins were measured on seeds 0-4
(see each assertion). Image labels (ResMixMatch) do not beat the synthetic-only model at any scale measured here
(per-seed numbers and the reasons: the method config, above `eps_pos`): no test claims they do.

The learning fixture is a 128 px carpet (16×16 tokens) with 2×2 windows: the paper's window covers 1/8 of its
64×64 token grid, and the demo's 64 px (8×8 tokens, 4×4 windows: half the grid) spreads each defect over half the
image (ibid.), so that the fine-tuned weak-label runs lose to PatchCore there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from defectbench.data.samples import Sample
from defectbench.experiments import deep_merge, method_params
from defectbench.features import ResidualFile, compute_residual_features, feature_settings
from defectbench.methods.base import build
from defectbench.methods.weakrest.anomalies import synthesize_anomaly
from defectbench.methods.weakrest.foreground import ForegroundEstimator
from defectbench.methods.weakrest.loss import IGNORE, UNKNOWN, focal_loss, random_mask, sharpen, token_mixup
from defectbench.methods.weakrest.method import image_supervisions, real_block_labels
from defectbench.metrics import evaluate
from defectbench.tables.spec import GridEntry, TableSpec

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = (64, 64)
CARPET = (128, 128)  # the learning fixture's images (module docstring)
WINDOW = 2  # 1/8 of its 16×16 token grid, as the paper's 8 of 64


@pytest.fixture(scope="module")
def carpet(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Synthetic MVTec carpet at 128 px (16 defective images: 10 to training), its residual file and PatchCore's
    pixel AP at that size."""
    from defectbench.data.indexers import index_dataset
    from defectbench.data.samples import load_samples
    from defectbench.data.splits import make_split
    from defectbench.data.synthetic import synthesize
    from defectbench.io import write_csv

    tmp = tmp_path_factory.mktemp("weakrest")
    torch.set_num_threads(1)
    root = synthesize(
        "mvtec_ad", tmp / "mvtec_ad", seed=0, categories=["carpet"], image_size=CARPET[0], n_test_per_defect=8
    )
    manifest = index_dataset("mvtec_ad", root, check_counts=False)
    manifest_csv = write_csv(tmp / "manifest.csv", manifest)
    subsets = {}
    for protocol in ("unsupervised", "supervised10"):
        split_csv = write_csv(
            tmp / f"{protocol}.csv", make_split("mvtec_ad", protocol, manifest, synthetic=True)
        )
        subsets[protocol] = load_samples(manifest_csv, split_csv, root, "carpet")
    settings = {**feature_settings("weakrest", "mvtec_ad", "carpet", "demo"), "input_size": list(CARPET)}
    path = compute_residual_features(
        tmp / "residuals.npz", subsets["unsupervised"], settings, CPU, "unsupervised.csv"
    )
    patchcore_params = {**method_params("patchcore", "mvtec_ad", "demo"), "input_size": list(CARPET)}
    patchcore = build("patchcore", patchcore_params, CPU, 0)
    patchcore.fit(subsets["supervised10"]["train"])
    test = subsets["supervised10"]["test"]
    return {
        "subsets": subsets,
        "file": ResidualFile(path, settings),
        "test": test,
        "patchcore": pixel_ap(patchcore, test),
        "models": {},
    }


def pixel_ap(method, test: list[Sample]) -> float:
    predictions = method.predict(test, CARPET)
    masks = np.stack([s.read_mask(CARPET) for s in test])
    labels = np.array([s.label for s in test])
    return evaluate(predictions.score, labels, predictions.maps, masks, ["p_ap"])["p_ap"]


def weakrest(carpet: dict, supervision: str, upstream: str | None = None, **overrides: object):
    """A WeakREST model of the demo settings trained with `supervision` (cached per configuration)."""
    key = (supervision, upstream, tuple(sorted(overrides.items())))
    if key not in carpet["models"]:
        params = deep_merge(
            method_params("weakrest", "mvtec_ad", "demo"),  # procedural textures (DTD: test_dtd.py)
            {
                "supervision": supervision,
                "window": WINDOW,
                "anomaly": {"texture_source": "procedural"},
                **overrides,
            },
        )
        if supervision != "un":
            params["batch_mix"] = [2, 2, 1]
        method = build("weakrest", params, CPU, 0)
        method.features = carpet["file"]
        method.upstream = weakrest(carpet, "un") if upstream else None
        protocol = "unsupervised" if supervision == "un" else "supervised10"
        method.fit(carpet["subsets"][protocol]["train"])
        carpet["models"][key] = method
    return carpet["models"][key]


def test_pixel_and_block_labels_beat_patchcore(carpet: dict) -> None:
    """Pixel masks reach the block-wise network as Eq. 15's block labels, the block setting's own labels: one
    trained model answers for both settings (the test checks that their labels are the same)."""
    sample = next(s for s in carpet["subsets"]["supervised10"]["train"] if s.label == 1)
    params, rng = method_params("weakrest", "mvtec_ad", "demo"), np.random.default_rng(0)
    np.testing.assert_array_equal(
        real_block_labels(sample, "pixel", params, SIZE, 8, rng),
        real_block_labels(sample, "block", params, SIZE, 8, rng),
    )
    ap = pixel_ap(weakrest(carpet, "block"), carpet["test"])
    # measured: 0.68 vs 0.48 (seeds 1-4: 0.62 / 0.63 / 0.65 / 0.65)
    assert ap > carpet["patchcore"] + 0.08, (ap, carpet["patchcore"])


def test_box_labels_beat_patchcore(carpet: dict) -> None:
    """ResMixMatch on box labels (the paper's 50 % rule), fine-tuned from the unsupervised model. Fine-tuning runs at
    lr 2e-4: the demo's 1e-3 (20× the paper's 5e-5, so that 120 steps from scratch converge) dropped this run to
    0.38 on seed 0 (seeds 1-4: 0.57 / 0.60 / 0.62 / 0.66)."""
    model = weakrest(carpet, "bbox", upstream="un", box_outside=0.5, lr=2e-4)
    ap = pixel_ap(model, carpet["test"])
    # measured: 0.66 vs 0.48 (seeds 1-4: 0.62 / 0.61 / 0.62 / 0.66)
    assert ap > carpet["patchcore"] + 0.08, (ap, carpet["patchcore"])


def test_predict_reports_latency_and_maps_at_eval_size(carpet: dict) -> None:
    model = weakrest(carpet, "un")
    predictions = model.predict(carpet["test"][:3], (32, 48))
    assert predictions.maps.shape == (3, 32, 48)
    assert model.latency_ms > 0


def test_state_round_trip_predicts_the_same(carpet: dict) -> None:
    model = weakrest(carpet, "un")
    again = build("weakrest", model.params, CPU, 0)
    again.features = carpet["file"]
    again.load_state_dict(model.state_dict())
    a, b = model.predict(carpet["test"][:4], CARPET), again.predict(carpet["test"][:4], CARPET)
    np.testing.assert_allclose(a.maps, b.maps, atol=1e-6)


def object_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A textured disc on a flat grey background, slightly shifted; (image, object mask)."""
    y, x = np.mgrid[0:64, 0:64]
    cy, cx = 32 + rng.integers(-3, 4), 32 + rng.integers(-3, 4)
    inside = (y - cy) ** 2 + (x - cx) ** 2 < 18**2
    image = np.full((64, 64, 3), 128, np.uint8)
    texture = (128 + 100 * np.sin(x / 1.5) * np.cos(y / 2.0) + rng.normal(0, 10, (64, 64))).clip(0, 255)
    image[inside] = texture[inside, None].astype(np.uint8)
    return image, inside


def test_lda_foreground_separates_object_from_flat_background(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples, masks = [], []
    for i in range(8):
        image, mask = object_image(rng)
        path = tmp_path / f"{i}.png"
        Image.fromarray(image).save(path)
        samples.append(Sample(f"train/{i}", 0, "good", path, "", tmp_path, 64, 64, "train", False))
        masks.append(mask)
    settings = feature_settings("weakrest", "mvtec_ad", "bottle", "demo")
    file = ResidualFile(
        compute_residual_features(tmp_path / "r.npz", {"train": samples}, settings, CPU, "s.csv")
    )
    params = method_params("weakrest", "mvtec_ad", "demo")["foreground"]
    estimator = ForegroundEstimator(params, file, CPU, 0)
    estimator.fit(samples, SIZE)
    truth = np.stack([m.reshape(8, 8, 8, 8).mean(axis=(1, 3)) > 0.5 for m in masks])
    auroc = roc_auc_score(truth.ravel(), estimator.maps.ravel())
    assert auroc > 0.9, auroc


def test_weak_labels_of_real_defects() -> None:
    """Box and image labels leave the defect unknown and the outside normal; pixel labels mark it defective. A block
    straddling the box edge is normal when at least `box_outside` of it lies outside the box (Sec. III-D1)."""

    class FakeSample:
        def __init__(self, right: int):
            self.right = right

        def read_mask(self, size):
            mask = np.zeros(size, bool)
            mask[16:32, 16 : self.right] = True
            return mask

    params = method_params("weakrest", "mvtec_ad", "paper")
    assert params["box_outside"] == 0.5 and params["box_jitter"] == 0
    rng = np.random.default_rng(0)
    pixel = real_block_labels(FakeSample(40), "pixel", params, SIZE, 8, rng)
    bbox = real_block_labels(FakeSample(40), "bbox", params, SIZE, 8, rng)
    image = real_block_labels(FakeSample(40), "image", params, SIZE, 8, rng)
    assert pixel[2:4, 2:5].min() == 1 and pixel[0, 0] == 0
    assert (bbox[2:4, 2:5] == UNKNOWN).all() and bbox[0, 0] == 0 and bbox.max() == 0
    assert (image == UNKNOWN).all()
    # the box reaches 3 (then 5) of the 8 pixel columns of block column 5: mostly outside, then mostly inside
    assert (real_block_labels(FakeSample(43), "bbox", params, SIZE, 8, rng)[2:4, 5] == 0).all()
    assert (real_block_labels(FakeSample(45), "bbox", params, SIZE, 8, rng)[2:4, 5] == UNKNOWN).all()


def test_mixed_supervision_labels_a_seeded_subset_by_pixels() -> None:
    """mixed: `pixel_labelled` of the defective images get block labels, the others image labels; same seed, same
    choice whatever the order of the samples; asking for more than there are is an error."""
    real = [
        Sample(f"test/cut/{i}", 1, "cut", Path(f"{i}.png"), "", Path("."), 64, 64, "test", True)
        for i in range(10)
    ]
    kinds = image_supervisions(real, "mixed", 5, seed=0)
    assert sorted(kinds) == ["block"] * 5 + ["image"] * 5
    shuffled = image_supervisions(real[::-1], "mixed", 5, seed=0)[::-1]
    assert shuffled == kinds and image_supervisions(real, "mixed", 5, seed=1) != kinds
    assert image_supervisions(real, "bbox", 5, seed=0) == ["bbox"] * 10
    with pytest.raises(ValueError, match="asks for 11 pixel-labelled images of 10"):
        image_supervisions(real, "mixed", 11, seed=0)


def test_loss_pieces() -> None:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 4, 4, 8)
    masked = random_mask(tokens, beta=1.0, kappa=0.0, generator=generator)
    assert torch.count_nonzero(masked) == 0
    jittered = random_mask(tokens, beta=0.0, kappa=0.1, generator=generator)
    relative = (jittered - tokens).norm(dim=-1) / tokens.norm(dim=-1)
    torch.testing.assert_close(relative, torch.full_like(relative, 0.1))
    assert sharpen(torch.tensor([0.7]), 0.5) > 0.7 and sharpen(torch.tensor([0.5]), 0.5) == 0.5
    logits = torch.tensor([3.0, -3.0, 3.0])
    good = focal_loss(logits, torch.tensor([1.0, 0.0, 1.0]), torch.ones(3, dtype=torch.bool), 0.25, 4)
    bad = focal_loss(logits, torch.tensor([0.0, 1.0, 0.0]), torch.ones(3, dtype=torch.bool), 0.25, 4)
    assert good < bad


def test_token_mixup_pairs_tokens_across_the_batch_and_leaves_ignored_ones() -> None:
    """Algorithm 1's W = Shuffle(Union(X, U)): partners are tokens of any image and position, never ignored ones."""
    labels = torch.tensor([[[0, IGNORE], [UNKNOWN, 1]], [[0, 0], [IGNORE, UNKNOWN]]])
    tokens = torch.arange(8, dtype=torch.float32).reshape(2, 2, 2, 1) * 10
    targets = labels.clamp_min(0).float()
    mixed, mixed_targets = token_mixup(tokens, targets, labels, 0.75, torch.Generator().manual_seed(0))
    partners = ((mixed - 0.75 * tokens) / 0.25 / 10).round().long().reshape(-1)
    usable = (labels != IGNORE).reshape(-1)
    assert sorted(partners[usable].tolist()) == torch.nonzero(usable)[:, 0].tolist()  # a permutation of them
    assert (partners[~usable] == torch.nonzero(~usable)[:, 0]).all()  # ignored tokens unchanged
    assert (
        partners[usable].div(4, rounding_mode="floor") != torch.arange(8)[usable] // 4
    ).any()  # across images
    torch.testing.assert_close(
        mixed_targets.reshape(-1), 0.75 * targets.reshape(-1) + 0.25 * targets.reshape(-1)[partners]
    )


def test_synthetic_anomaly_changes_only_its_mask() -> None:
    rng = np.random.default_rng(0)
    image = np.full((64, 64, 3), 100, np.uint8)
    params = method_params("weakrest", "mvtec_ad", "demo")["anomaly"]
    anomalous, mask = synthesize_anomaly(image, rng, lambda r, s: np.full((*s, 3), 250, np.uint8), params)
    assert mask.sum() > params["min_component_px"]
    assert (anomalous[~mask] == 100).all() and (anomalous[mask] != 100).any()


def test_experiment_by_setting_picks_the_cell_experiment() -> None:
    table = TableSpec("t", "t", [], [], defaults={"dataset": "mvtec_ad"})
    row = GridEntry("eps", {"experiment_by_setting": {"un": "a_un", "rbbox": "a_rbbox"}})
    assert table.cell_keys(row, GridEntry("AP", {"setting": "rbbox"}))["experiment"] == "a_rbbox"
    assert "experiment" not in table.cell_keys(row, GridEntry("AP", {"setting": "bbox"}))


def test_every_weakrest_cell_of_ours_is_measured() -> None:
    """No cell of the paper's own method is left published-only (Tables I-X, Fig. 6)."""
    from defectbench.tables.spec import figure_points, load_spec, table_specs

    spec = load_spec("config/tables/weakrest.yaml")
    missing = []
    for table in table_specs(spec):
        for row in table.rows:
            for column in table.columns:
                keys = table.cell_keys(row, column)
                if (
                    str(keys.get("method", "")).startswith("Ours")
                    and not row.average_of
                    and "experiment" not in keys
                ):
                    missing.append((table.name, row.label, column.label))
    for _, _, keys in figure_points(spec["figures"]["fig6"]):
        if keys["method"] == "Ours" and "experiment" not in keys:
            missing.append(("fig6", keys["setting"]))
    assert not missing
