"""WeakREST, weakly-supervised residual transformers (paper `weakrest`): registers the method `weakrest`."""

from defectbench.methods.weakrest.anomalies import perlin_noise, procedural_texture, synthesize_anomaly
from defectbench.methods.weakrest.foreground import ForegroundEstimator
from defectbench.methods.weakrest.loss import focal_loss, random_mask, resmixmatch_loss, sharpen
from defectbench.methods.weakrest.method import WeakREST, real_block_labels
from defectbench.methods.weakrest.model import ResidualTransformer, residual_tokens

__all__ = [
    "ForegroundEstimator", "ResidualTransformer", "WeakREST", "focal_loss", "perlin_noise", "procedural_texture",
    "random_mask", "real_block_labels", "residual_tokens", "resmixmatch_loss", "sharpen", "synthesize_anomaly",
]  # fmt: skip
