"""SimpleClick (Liu et al., ICCV 2023): a plain ViT-B/16 with click maps, an interactive-segmentation baseline."""

from defectbench.methods.simpleclick.method import SimpleClick
from defectbench.methods.simpleclick.model import SimpleClickNet, map_published

__all__ = ["SimpleClick", "SimpleClickNet", "map_published"]
