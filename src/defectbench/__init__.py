"""defectbench: reproduce weakly-supervised industrial defect detection papers in one workflow."""

__version__ = "0.1.0"
