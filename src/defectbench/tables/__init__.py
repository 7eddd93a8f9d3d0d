"""Paper tables and figures: measured metrics beside the published numbers (see docs/DEVELOPING.md)."""

from defectbench.tables.figures import render_figures
from defectbench.tables.render import BANNER, render_paper
from defectbench.tables.sources import load_metrics, load_published
from defectbench.tables.spec import TableInputError, figure_names, load_spec, required_cells, table_names

__all__ = [
    "BANNER",
    "TableInputError",
    "figure_names",
    "load_metrics",
    "load_published",
    "load_spec",
    "render_figures",
    "render_paper",
    "required_cells",
    "table_names",
]
