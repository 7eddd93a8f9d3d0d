"""predictions.npz: the one thing every method must produce (torch-free, so evaluation starts fast)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from defectbench.io import write_npz

CLICK_MAPS_PREFIX = "click_maps_"


@dataclass
class Predictions:
    """What every method produces for a test set (docs/DESIGN.md: predictions.npz); click models add their curves."""

    image_id: np.ndarray  # (N,) str
    score: np.ndarray  # (N,) float32 image scores, higher = more anomalous
    maps: np.ndarray  # (N, H, W) float16 anomaly maps at the dataset's evaluation size
    click_ious: np.ndarray | None = (
        None  # (N, max_clicks) IoU after each click; NaN = undefined (metrics.clicks)
    )
    click_maps: dict[int, np.ndarray] = field(
        default_factory=dict
    )  # k -> (N, H, W) float16 maps after k clicks

    def __post_init__(self) -> None:
        self.image_id = np.asarray(self.image_id, dtype=str)
        self.score = np.asarray(self.score, dtype=np.float32)
        self.maps = np.asarray(self.maps, dtype=np.float16)
        self.click_maps = {int(k): np.asarray(v, dtype=np.float16) for k, v in self.click_maps.items()}
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
