"""f-AnoGAN (Schlegl et al., 2019), the SegDecNet paper's GAN-based unsupervised baseline (section 4.5)."""

from defectbench.methods.fanogan.method import (
    FAnoGAN,
    anomaly_scores,
    gather_patches,
    gradient_penalty,
    sample_positions,
    sliding_windows,
    window_pixel_map,
)
from defectbench.methods.fanogan.model import Critic, Encoder, Generator

__all__ = [
    "Critic", "Encoder", "FAnoGAN", "Generator", "anomaly_scores", "gather_patches", "gradient_penalty",
    "sample_positions", "sliding_windows", "window_pixel_map",
]  # fmt: skip
