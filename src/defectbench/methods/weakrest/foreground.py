"""Foreground estimation for object categories (WeakREST Sec. III-E, Eq. 20): KMeans (k = 2) splits the training
images' CNN features; the cluster the coreset samples more often is the foreground (the paper's cue; the authors'
code takes the cluster off the image border instead); an LDA trained on the two clusters gives the foreground map;
a test map is reweighted by the max over its K reference images' foreground maps to the power r."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from sklearn.cluster import KMeans
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from defectbench.data.images import DataError
from defectbench.data.samples import Sample
from defectbench.methods.backbones import create_backbone, imagenet_normalize


def coreset_frequency(bank_image: np.ndarray, bank_position: np.ndarray, images: int, grid: tuple[int, int],
                      sigma: float) -> np.ndarray:  # fmt: skip
    """How often the coreset picked each position of each training image, smoothed: (images, h, w) in [0, 1]."""
    counts = np.zeros((images, grid[0] * grid[1]), np.float64)
    np.add.at(counts, (bank_image, bank_position), 1.0)
    maps = np.stack([gaussian_filter(c.reshape(grid), sigma=sigma, mode="nearest") for c in counts])
    return maps / max(maps.max(), 1e-12)


def trimmed_minmax(values: np.ndarray, trim: float) -> np.ndarray:
    """Min–max normalisation after clipping the `trim` tails on both sides, into [0, 1]."""
    low, high = np.quantile(values, [trim, 1 - trim])
    return np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)


class ForegroundEstimator:
    """Foreground maps E (n_train, h, w) of the residual file's training images, and Eq. 20's weights."""

    def __init__(self, params: dict[str, Any], file: Any, device: torch.device, seed: int):
        self.params = params
        self.file = file
        self.device = device
        self.seed = seed
        self.maps: np.ndarray | None = None
        self.lda: np.ndarray | None = None  # coefficients, intercept, trim low, trim high

    def features(self, images: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
        """CNN features (n, h, w, C) of uint8 images on the residual grid."""
        p = self.params
        backbone = create_backbone(p["backbone"], p["pretrained"], seed=self.seed, features_only=True,
                                   out_indices=(p["layer"],)).to(self.device)  # fmt: skip
        out = []
        with torch.no_grad():
            for start in range(0, len(images), 8):
                batch = torch.from_numpy(images[start : start + 8]).permute(0, 3, 1, 2).to(self.device)
                fmap = backbone(imagenet_normalize(batch))[0]
                out.append(
                    F.interpolate(fmap, size=grid, mode="bilinear", align_corners=False)
                    .permute(0, 2, 3, 1)
                    .cpu()
                )
        return torch.cat(out).numpy()

    def fit(self, normal: list[Sample], size: tuple[int, int]) -> None:
        p = self.params
        by_id = {s.image_id: s for s in normal}
        train_ids = [str(i) for i in self.file.arrays["train_ids"]]
        missing = [i for i in train_ids if i not in by_id]
        if missing:
            raise DataError(f"{self.file.path} was computed from training images {missing[:3]} this split lacks; "
                            f"delete it and re-run")  # fmt: skip
        grid = tuple(self.file.residuals.shape[1:3])
        images = np.stack([by_id[i].read_image(size) for i in train_ids])
        feats = self.features(images, grid)
        state = self.file.state()
        if p["method"] == "coreset":  # Table X "Coreset": the frequency map itself
            self.maps = coreset_frequency(state["bank_image"], state["bank_position"], len(train_ids), grid,
                                          p["frequency_sigma"]).astype(np.float32)  # fmt: skip
            return
        if (
            p["method"] == "binarization"
        ):  # Table X "Binarization": Otsu-free mean threshold of the image intensity
            gray = images.mean(axis=-1)
            small = F.adaptive_avg_pool2d(torch.from_numpy(gray)[:, None].float(), grid)[:, 0].numpy()
            flat = small.reshape(len(small), -1)
            self.maps = (small > flat.mean(axis=1)[:, None, None]).astype(np.float32)
            return
        frequency = coreset_frequency(state["bank_image"], state["bank_position"], len(train_ids), grid,
                                      p["frequency_sigma"])  # fmt: skip
        rng = np.random.default_rng(self.seed)
        flat_features = feats.reshape(-1, feats.shape[-1])
        subset = rng.choice(len(flat_features), min(p["kmeans_samples"], len(flat_features)), replace=False)
        clusters = (
            KMeans(2, n_init=4, random_state=self.seed).fit(flat_features[subset]).predict(flat_features)
        )
        # the foreground cluster is the one the coreset samples more often (Sec. III-E, Fig. 5)
        foreground = int(np.argmax([frequency.reshape(-1)[clusters == c].mean() if (clusters == c).any() else -1
                                    for c in (0, 1)]))  # fmt: skip
        members = [np.flatnonzero(clusters == foreground), np.flatnonzero(clusters != foreground)]
        per_class = min(p["max_per_class"], *(len(m) for m in members))
        if per_class == 0:
            raise DataError(
                f"{self.file.path}: the training images' features form one cluster; no foreground to learn"
            )
        positive = rng.choice(members[0], per_class, replace=False)
        negative = rng.choice(members[1], per_class, replace=False)
        lda = LinearDiscriminantAnalysis()
        lda.fit(np.concatenate([flat_features[positive], flat_features[negative]]),
                np.concatenate([np.ones(per_class), np.zeros(per_class)]))  # fmt: skip
        decision = lda.decision_function(flat_features)
        low, high = np.quantile(decision, [p["trim"], 1 - p["trim"]])
        self.lda = np.concatenate([lda.coef_[0], lda.intercept_, [low, high]]).astype(np.float64)
        self.maps = trimmed_minmax(decision, p["trim"]).reshape(feats.shape[:3]).astype(np.float32)

    def test_maps(self, images: np.ndarray) -> torch.Tensor:
        """Table X "Ours (test image)": the LDA map of the test images themselves (B, h, w), normalised like the
        training maps."""
        feats = self.features(images, self.maps.shape[1:])
        coef, intercept, low, high = self.lda[:-3], self.lda[-3], self.lda[-2], self.lda[-1]
        decision = feats @ coef + intercept
        return torch.from_numpy(np.clip((decision - low) / max(high - low, 1e-12), 0, 1).astype(np.float32))

    def weights(self, references: np.ndarray) -> torch.Tensor:
        """Eq. 20's factor (B, h, w): [max over the K reference images' maps]^r; -1 entries pad the references."""
        out = []
        for refs in np.asarray(references):
            refs = refs[refs >= 0]
            out.append(self.maps[refs].max(axis=0) ** self.params["power"])
        return torch.from_numpy(np.stack(out))

    def state_dict(self) -> dict[str, Any]:
        return {"maps": self.maps, "lda": self.lda}

    @classmethod
    def from_state(
        cls, params: dict[str, Any], state: dict[str, Any], device: torch.device
    ) -> ForegroundEstimator:
        estimator = cls(params, None, device, 0)
        estimator.maps = np.asarray(state["maps"], dtype=np.float32)
        estimator.lda = state["lda"]
        return estimator
