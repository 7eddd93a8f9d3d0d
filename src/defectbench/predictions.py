"""predictions.npz: the one thing every method must produce (torch-free, so evaluation starts fast)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defectbench.io import write_npz


def map_dtype(maps: np.ndarray) -> type[np.floating]:
    """float16 for maps within [0, 1] (probabilities, normalised CAMs: half the disk and memory at a resolution
    of 2^-11 or finer), float32 for unbounded scores such as distances or residuals, which float16 would
    overflow above 65,504 or round into ties. NaN or infinity is an error of the method."""
    values = np.asarray(maps)
    if values.size == 0 or values.dtype == np.float16:
        low, high = (0.0, 0.0) if values.size == 0 else (float(values.min()), float(values.max()))
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError("anomaly maps hold NaN or infinite values")
        return np.float16
    low, high = float(np.min(values)), float(np.max(values))
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError("anomaly maps hold NaN or infinite values; a method must produce finite scores")
    return np.float16 if low >= 0.0 and high <= 1.0 else np.float32


@dataclass
class Predictions:
    """What every method produces for a test set (docs/DESIGN.md: predictions.npz)."""

    image_id: np.ndarray  # (N,) str
    score: np.ndarray  # (N,) float32 image scores, higher = more anomalous
    maps: np.ndarray  # (N, H, W) anomaly maps at the evaluation size: float16 within [0, 1], else float32

    def __post_init__(self) -> None:
        self.image_id = np.asarray(self.image_id, dtype=str)
        self.score = np.asarray(self.score, dtype=np.float32)
        self.maps = np.asarray(self.maps, dtype=map_dtype(self.maps))
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
