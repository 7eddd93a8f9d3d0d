"""predictions.npz: the one thing every method must produce (torch-free, so evaluation starts fast)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from defectbench.io import write_npz

CLICK_MAPS_PREFIX = "click_maps_"


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
    """What every method produces for a test set (docs/DESIGN.md: predictions.npz); click models add their curves."""

    image_id: np.ndarray  # (N,) str
    score: np.ndarray  # (N,) float32 image scores, higher = more anomalous
    maps: np.ndarray  # (N, H, W) anomaly maps at the evaluation size: float16 within [0, 1], else float32
    click_ious: np.ndarray | None = (
        None  # (N, max_clicks) IoU after each click; NaN = undefined (metrics.clicks)
    )
    click_maps: dict[int, np.ndarray] = field(
        default_factory=dict
    )  # k -> (N, H, W) float16 maps after k clicks

    def __post_init__(self) -> None:
        self.image_id = np.asarray(self.image_id, dtype=str)
        self.score = np.asarray(self.score, dtype=np.float32)
        self.maps = np.asarray(self.maps, dtype=map_dtype(self.maps))
        self.click_maps = {int(k): np.asarray(v, dtype=map_dtype(v)) for k, v in self.click_maps.items()}
        lengths = [len(self.image_id), len(self.score), len(self.maps)]
        lengths += [len(self.click_ious)] if self.click_ious is not None else []
        lengths += [len(v) for v in self.click_maps.values()]
        if len(set(lengths)) != 1:
            raise ValueError(f"predictions disagree in length: {lengths} (ids, scores, maps, click arrays)")

    def save(self, path: str | Path) -> Path:
        extra = {f"{CLICK_MAPS_PREFIX}{k}": v for k, v in self.click_maps.items()}
        if self.click_ious is not None:
            extra["click_ious"] = np.asarray(
                self.click_ious, np.float64
            )  # float32 turns IoU 0.9 into 0.89999
        return write_npz(path, image_id=self.image_id, score=self.score, maps=self.maps, **extra)

    @classmethod
    def load(cls, path: str | Path) -> Predictions:
        with np.load(path, allow_pickle=False) as data:
            click_maps = {
                int(name.removeprefix(CLICK_MAPS_PREFIX)): data[name]
                for name in data.files
                if name.startswith(CLICK_MAPS_PREFIX)
            }
            ious = data["click_ious"] if "click_ious" in data.files else None
            return cls(data["image_id"], data["score"], data["maps"], ious, click_maps)
