"""GPCIS (Zhou et al., CVPR 2023): Gaussian-process click propagation on ResNet-50 features, a click baseline."""

from defectbench.methods.gpcis.method import GPCIS
from defectbench.methods.gpcis.model import GPCISNet, map_published

__all__ = ["GPCIS", "GPCISNet", "map_published"]
