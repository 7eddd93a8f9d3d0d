"""predictions.npz keeps every map's ranking: float16 only for maps within [0, 1], float32 for unbounded scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from defectbench.metrics import evaluate
from defectbench.predictions import Predictions


def test_unbounded_map_is_stored_without_overflow_or_ties(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    maps = rng.uniform(60_000, 1e6, (4, 8, 8)).astype(np.float32)  # distances far beyond float16's 65,504
    saved = Predictions(["a", "b", "c", "d"], [1, 2, 3, 4], maps).save(tmp_path / "p.npz")
    loaded = Predictions.load(saved)
    assert loaded.maps.dtype == np.float32 and np.isfinite(loaded.maps).all()
    np.testing.assert_array_equal(loaded.maps, maps)
    assert len(np.unique(loaded.maps)) == maps.size  # float16 would round these into a few hundred values
    masks = maps > np.median(maps)
    values = evaluate(loaded.score, np.array([0, 1, 0, 1]), loaded.maps, masks, ["p_auroc"])
    assert values["p_auroc"] == pytest.approx(1.0)


def test_probability_maps_stay_float16_and_non_finite_maps_are_refused() -> None:
    assert Predictions(["a"], [0.5], np.full((1, 4, 4), 0.25, np.float32)).maps.dtype == np.float16
    assert Predictions(["a"], [0.5], np.full((1, 4, 4), -0.5, np.float32)).maps.dtype == np.float32
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match="NaN or infinite"):
            Predictions(["a"], [0.5], np.full((1, 2, 2), bad, np.float32))
