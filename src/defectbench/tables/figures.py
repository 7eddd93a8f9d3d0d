"""Paper figures (line and grouped-bar plots) from measured values, with the published values overlaid."""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from defectbench.io import atomic_path
from defectbench.tables.render import BANNER, PublishedIndex, load_inputs
from defectbench.tables.sources import MeasuredIndex
from defectbench.tables.spec import figure_points, is_percent


def render_figures(
    paper: str,
    spec_path: str | os.PathLike,
    published_csv: str | os.PathLike,
    metrics_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    synthetic: bool,
    selected: Mapping[str, Collection[str]] | None = None,
    only: Collection[str] | None = None,
    table_units: Mapping[str, Mapping[str, Collection[str]]] | None = None,
) -> list[Path]:
    """Write `<out_dir>/<paper>/<figure>.png` for every figure of the spec (or those in `only`).

    `out_dir` is the figures root (results/figures); `selected` and `table_units` (by figure) as in render_paper.
    """
    spec, published, measured = load_inputs(paper, spec_path, published_csv, metrics_csv, selected)
    paths = []
    for name, figure in (spec.get("figures") or {}).items():
        if only is not None and name not in only:
            continue
        units = (table_units or {}).get(name)
        series = figure_series(figure, published, measured if units is None else measured.restricted(units))
        paths.append(_plot(figure, series, Path(out_dir) / paper / f"{name}.png", synthetic))
    return paths


def figure_series(
    figure: Mapping[str, Any], published: PublishedIndex, measured: MeasuredIndex
) -> list[dict[str, Any]]:
    """Per series: label, x values, measured and published y (NaN where absent), in display units, and per point
    the partial-units note ("2/10 units" where only some of the point's units were measured, else "")."""
    series = [
        {"label": s["label"], "x": [], "measured": [], "published": [], "partial": []}
        for s in figure["series"]
    ]
    for s_index, p_index, keys in figure_points(figure):
        scale = 100.0 if is_percent(keys) else 1.0
        value = measured.lookup(keys)
        pub = published.lookup(keys)
        entry = series[s_index]
        entry["x"].append(figure["series"][s_index]["points"][p_index]["x"])
        entry["measured"].append(math.nan if value is None else value.value * scale)
        entry["published"].append(math.nan if pub is None else pub[0])
        partial = value is not None and not value.complete
        entry["partial"].append(f"{value.n_units}/{value.units_total} units" if partial else "")
    return series


def _mark_partial(ax: Any, xs: np.ndarray, ys: np.ndarray, notes: np.ndarray, color: str) -> None:
    """Write "n/m units" at every point measured on only some of its units (a partial mean or sum)."""
    for x, y, note in zip(xs, ys, notes, strict=True):
        if note:
            ax.annotate(note, (x, y), textcoords="offset points", xytext=(0, 3), ha="center", va="bottom",
                        rotation=90, fontsize=6, color=color)  # fmt: skip


def _plot(figure: Mapping[str, Any], series: list[dict[str, Any]], dest: Path, synthetic: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_x = [x for s in series for x in s["x"]]
    numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in all_x)
    categories = list(dict.fromkeys(str(x) for x in all_x))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    fig, ax = plt.subplots(figsize=(7.0, 4.4), dpi=110)
    if figure["kind"] == "line":
        for i, s in enumerate(series):
            xs = (
                np.asarray(s["x"], dtype=float)
                if numeric
                else np.array([categories.index(str(x)) for x in s["x"]])
            )
            order = np.argsort(xs, kind="stable")
            color = colors[i % len(colors)]
            measured, pub = np.asarray(s["measured"])[order], np.asarray(s["published"])[order]
            if np.isfinite(measured).any():
                ax.plot(xs[order], measured, "-o", color=color, label=s["label"])
                _mark_partial(ax, xs[order], measured, np.asarray(s["partial"])[order], color)
            if np.isfinite(pub).any():
                keep = np.isfinite(pub)
                ax.plot(
                    xs[order][keep], pub[keep], "--o", color=color, markerfacecolor="none",
                    label=f"{s['label']} (published)",
                )  # fmt: skip
    else:
        width = 0.8 / max(len(series), 1)
        published_label = "published"  # one legend entry for all published markers
        for i, s in enumerate(series):
            color = colors[i % len(colors)]
            xs = np.array([categories.index(str(x)) for x in s["x"]], dtype=float) - 0.4 + width * (i + 0.5)
            measured, pub = np.asarray(s["measured"]), np.asarray(s["published"])
            ax.bar(xs, np.nan_to_num(measured), width=width * 0.9, color=color, label=s["label"])
            _mark_partial(ax, xs, np.nan_to_num(measured), np.asarray(s["partial"]), color)
            for x in xs[~np.isfinite(measured)]:
                ax.text(x, 0, "not run", rotation=90, ha="center", va="bottom", fontsize=7, color="#777")
            keep = np.isfinite(pub)
            if keep.any():
                ax.plot(
                    xs[keep], pub[keep], linestyle="none", marker="D", markersize=6, markerfacecolor="none",
                    markeredgecolor="black", markeredgewidth=1.2, label=published_label,
                )  # fmt: skip
                published_label = "_nolegend_"
    if not numeric or figure["kind"] == "bar":
        ax.set_xticks(range(len(categories)), categories, rotation=30 if len(categories) > 6 else 0)
    ax.set_xlabel(figure.get("x_label", ""))
    ax.set_ylabel(figure.get("y_label", ""))
    title = figure["title"] + (f"\n{BANNER}" if synthetic else "")
    ax.set_title(title, fontsize=10, color="#7a5a00" if synthetic else "black")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no data: nothing measured or published", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
    return dest
