"""SAM (Kirillov et al., ICCV 2023) as an off-the-shelf click model, through `transformers`' SamModel."""

from defectbench.methods.sam.method import SamClickModel, SamMethod

__all__ = ["SamClickModel", "SamMethod"]
