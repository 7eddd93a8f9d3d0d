"""ADClick-Seg (ADClick paper Sec. 3.1, 3.4): the segmentation model trained from ADClick's 5-click labels."""

from defectbench.methods.adclick_seg.method import ADClickSeg

__all__ = ["ADClickSeg"]
