"""ADClick (Li et al., ECCV 2024): interactive anomaly labelling from clicks, residuals and defect prompts."""

from defectbench.methods.adclick.method import ADClick

__all__ = ["ADClick"]
