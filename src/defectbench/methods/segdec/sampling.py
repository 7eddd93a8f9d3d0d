"""Undersampling of negatives with frequency-aware sampling (paper §4.3)."""

from __future__ import annotations

from typing import Any

import numpy as np


class NegativeSampler:
    """Chooses the negatives of each epoch: as many as there are positives, distinct within an epoch.

    With `frequency_aware`, a negative's chance falls steeply with how often it was already used, so rarely seen
    negatives are preferred and over many epochs all are used about equally often. The weighting follows the
    authors' scheme: r = 1 − count / max(count), shifted so that its median is 1, raised to the power 4·ln(n).
    Without it, each epoch takes a uniformly random subset. Its state (counts, generator) is checkpointable.
    """

    def __init__(self, num_negatives: int, rng: np.random.Generator, frequency_aware: bool = True):
        if num_negatives < 1:
            raise ValueError("SegDecNet training needs at least one defect-free training image")
        self.counts = np.zeros(num_negatives, dtype=np.int64)
        self.rng = rng
        self.frequency_aware = frequency_aware

    def probabilities(self) -> np.ndarray:
        """Sampling probability of each negative for the next draw."""
        n = len(self.counts)
        if not self.frequency_aware or self.counts.max() == 0:
            return np.full(n, 1.0 / n)
        rarity = 1.0 - self.counts / self.counts.max()
        weights = (rarity - np.median(rarity) + 1.0) ** (4.0 * np.log(n))
        return weights / weights.sum()

    def draw(self, count: int) -> np.ndarray:
        """Indices of `count` distinct negatives (all of them, shuffled, when `count` exceeds their number)."""
        n = len(self.counts)
        if count >= n:
            chosen = self.rng.permutation(n)
        else:
            probabilities = self.probabilities()
            if np.count_nonzero(probabilities) < count:  # cannot happen for count <= n / 2; guard the rest
                probabilities = np.full(n, 1.0 / n)
            chosen = self.rng.choice(n, size=count, replace=False, p=probabilities)
        self.counts[chosen] += 1
        return chosen

    def state_dict(self) -> dict[str, Any]:
        return {"counts": self.counts.copy(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts = np.asarray(state["counts"], dtype=np.int64).copy()
        self.rng.bit_generator.state = state["rng"]
