"""PAR and the DenseCRF wrapper snap a noisy, misplaced class-map boundary to the edge between two flat regions."""

from __future__ import annotations

import numpy as np
import torch

from defectbench.methods.refine import dense_crf, par

EDGE = 40  # the image's regions meet between columns 39 and 40; the CAM's boundary lies at column 30


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uint8 image with a dark left and a bright right region, 2-class noisy CAM (2, H, W), true labels)."""
    rng = np.random.default_rng(0)
    image = np.full((48, 64, 3), 60, np.uint8)
    image[:, EDGE:] = 190
    columns = np.arange(64)[None, :].repeat(48, 0)
    foreground = 1 / (1 + np.exp(-(columns - 30) / 4.0)) + rng.normal(0, 0.15, (48, 64))
    foreground = np.clip(foreground, 0, 1).astype(np.float32)
    return image, np.stack([1 - foreground, foreground]), columns >= EDGE


def _boundary_error(labels: np.ndarray, truth: np.ndarray) -> float:
    return float((labels != truth).mean())


def test_par_snaps_the_boundary_to_the_region_edge() -> None:
    image, cam, truth = _scene()
    raw = _boundary_error(cam.argmax(0) == 1, truth)
    refined = par(torch.from_numpy(image).permute(2, 0, 1)[None].float(), torch.from_numpy(cam)[None], 20)
    error = _boundary_error(refined[0].argmax(0).numpy() == 1, truth)
    assert raw > 0.12  # the CAM puts columns 30-39 on the wrong side
    assert error < 0.02, (raw, error)


def test_dense_crf_snaps_the_boundary_to_the_region_edge() -> None:
    image, cam, truth = _scene()
    raw = _boundary_error(cam.argmax(0) == 1, truth)
    probabilities = dense_crf(image, cam, iterations=10)
    assert probabilities.shape == cam.shape and np.allclose(probabilities.sum(0), 1, atol=1e-4)
    error = _boundary_error(probabilities.argmax(0) == 1, truth)
    assert raw > 0.12 and error < 0.02, (raw, error)
