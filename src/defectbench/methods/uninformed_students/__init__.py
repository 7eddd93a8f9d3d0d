"""Uninformed Students (Bergmann et al., CVPR 2020), the SegDecNet paper's unsupervised baseline (section 4.5)."""

from defectbench.methods.uninformed_students.method import (
    UninformedStudents,
    ensemble_scores,
    segdec_image_score,
)
from defectbench.methods.uninformed_students.model import DenseTeacher, PatchStudent

__all__ = ["DenseTeacher", "PatchStudent", "UninformedStudents", "ensemble_scores", "segdec_image_score"]
