"""SegDecNet, mixed supervision (paper `segdec`): registers the method `segdec`."""

from defectbench.methods.segdec.method import SegDec, loss_weights, segdec_loss
from defectbench.methods.segdec.model import FeatureNorm, GradientMultiply, SegDecNet
from defectbench.methods.segdec.sampling import NegativeSampler
from defectbench.methods.segdec.targets import downsample, segmentation_targets

__all__ = [
    "FeatureNorm", "GradientMultiply", "NegativeSampler", "SegDec", "SegDecNet", "downsample", "loss_weights",
    "segdec_loss", "segmentation_targets",
]  # fmt: skip
