"""PatchCore (Roth et al., CVPR 2022): a coreset memory bank of locally aware normal patch features; a test
patch's score is its distance to the nearest bank patch. Baseline of the WeakREST and RFL tables."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from defectbench.data.samples import Sample
from defectbench.methods.backbones import create_backbone, imagenet_normalize
from defectbench.methods.base import Method, Predictions, register
from defectbench.methods.images import load_images
from defectbench.methods.memory import NearestNeighbours, greedy_coreset, local_patch_features


@register("patchcore")
class PatchCore(Method):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        p = self.params
        self.backbone = create_backbone(
            p["backbone"], p["pretrained"], seed=self.seed, features_only=True, out_indices=tuple(p["layers"])
        ).to(self.device)
        self.bank: np.ndarray | None = None
        self._neighbours: NearestNeighbours | None = None

    def _embed(self, samples: list[Sample]) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch features (N, h, w, D) of the images, in batches with a progress bar."""
        p = self.params
        size = tuple(p["input_size"])
        chunks = []
        for start in tqdm(range(0, len(samples), p["batch_size"]), desc="patchcore features", leave=False):
            batch = load_images(samples[start : start + p["batch_size"]], size, channels_last=True)
            images = imagenet_normalize(batch.to(self.device))
            with torch.no_grad():
                maps = self.backbone(images)
                chunks.append(
                    local_patch_features(maps, p["patch_size"], p["embed_dims"], p["embed_dims"]).cpu()
                )
        features = torch.cat(chunks)
        return features, features.shape[1:3]

    def fit(self, train: list[Sample], val: list[Sample] | None = None) -> list[dict[str, float]]:
        normal = [s for s in train if s.label == 0]
        features, _ = self._embed(normal)
        flat = features.reshape(-1, features.shape[-1])
        chosen = greedy_coreset(
            flat.to(self.device),
            self.params["coreset_fraction"],
            self.params["coreset_projection_dims"],
            self.params["coreset_start_points"],
            self.seed,
        )
        self.bank = flat[chosen].numpy()
        self._neighbours = None
        return [{"epoch": 0, "train_images": len(normal), "patches": len(flat), "bank_size": len(self.bank)}]

    def predict(self, samples: list[Sample], eval_size: tuple[int, int]) -> Predictions:
        if self._neighbours is None:
            self._neighbours = NearestNeighbours(self.bank, self.device)
        features, grid = self._embed(samples)
        distances, _ = self._neighbours.search(features.reshape(-1, features.shape[-1]).numpy())
        patch_scores = torch.from_numpy(distances[:, 0].reshape(len(samples), 1, *grid))
        input_size = tuple(self.params["input_size"])
        maps = F.interpolate(patch_scores, size=input_size, mode="bilinear", align_corners=False)[
            :, 0
        ].numpy()
        sigma = self.params["gaussian_sigma"]
        maps = np.stack([gaussian_filter(m, sigma=sigma, mode="nearest") for m in maps])
        if input_size != tuple(eval_size):
            maps = F.interpolate(torch.from_numpy(maps)[:, None], size=eval_size, mode="bilinear")[
                :, 0
            ].numpy()
        scores = patch_scores.flatten(1).amax(dim=1).numpy()
        return Predictions([s.image_id for s in samples], scores, maps)

    def state_dict(self) -> dict[str, Any]:
        return {"bank": self.bank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bank = np.asarray(state["bank"], dtype=np.float32)
        self._neighbours = None
