"""predictions.npz: the one thing every method must produce (torch-free, so evaluation starts fast)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defectbench.io import write_npz


@dataclass
class Predictions:
    """What every method produces for a test set (docs/DESIGN.md: predictions.npz)."""

    image_id: np.ndarray  # (N,) str
    score: np.ndarray  # (N,) float32 image scores, higher = more anomalous
    maps: np.ndarray  # (N, H, W) float16 anomaly maps at the dataset's evaluation size

    def __post_init__(self) -> None:
        self.image_id = np.asarray(self.image_id, dtype=str)
        self.score = np.asarray(self.score, dtype=np.float32)
        self.maps = np.asarray(self.maps, dtype=np.float16)
        if not len(self.image_id) == len(self.score) == len(self.maps):
            raise ValueError(
                f"predictions disagree in length: {len(self.image_id)} ids, {len(self.score)} scores, "
                f"{len(self.maps)} maps"
            )

    def save(self, path: str | Path) -> Path:
        return write_npz(path, image_id=self.image_id, score=self.score, maps=self.maps)

    @classmethod
    def load(cls, path: str | Path) -> Predictions:
        with np.load(path, allow_pickle=False) as data:
            return cls(data["image_id"], data["score"], data["maps"])
