"""Paper tables: measured cells beside the published numbers, as long CSV, Markdown and self-contained HTML."""

from __future__ import annotations

import html
import math
import os
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from defectbench.io import write_csv, write_text
from defectbench.tables.sources import Measured, MeasuredIndex, average, load_metrics, load_published
from defectbench.tables.spec import (
    NATURAL_UNITS,
    WHOLE_NUMBERS,
    TableSpec,
    aggregate_of,
    categories_of,
    is_percent,
    load_spec,
    measured_metric,
    published_category_of,
    table_specs,
)

BANNER = "Measured on synthetic demo data — not comparable to the published numbers"
MEASURED, PARTIAL, NOT_RUN, PUBLISHED_ONLY = "measured", "partial", "not run", "published only"
CSV_COLUMNS = [
    "table", "row", "column", "dataset", "category", "experiment", "metric", "aggregate", "measured",
    "measured_std", "n_seeds", "n_units", "units_total", "published", "difference", "status", "best", "unit",
]  # fmt: skip
MINUS = "\u2212"
DEFAULT_DECIMALS = 1


@dataclass
class Cell:
    """One rendered cell; `measured` is in the metric's stored unit ([0, 1] or natural), display = * scale."""

    row: str
    column: str
    keys: dict
    status: str
    measured: Measured | None
    published: float | None
    published_text: str | None
    scale: float
    units_total: int
    decimals: int = DEFAULT_DECIMALS
    best: bool = False

    @property
    def display_value(self) -> float | None:
        return None if self.measured is None else self.measured.value * self.scale

    @property
    def rounded(self) -> float | None:
        value = self.display_value
        return None if value is None or math.isnan(value) else round(value, self.decimals)

    @property
    def unit(self) -> str:
        return "%" if self.scale == 100 else NATURAL_UNITS.get(self.keys.get("metric", ""), "")

    @property
    def units_marker(self) -> str:
        """The marker "(2/10 units)" of a partial cell, whose value aggregates only the units measured so far."""
        if self.status != PARTIAL or self.measured is None:
            return ""
        return f"({self.measured.n_units}/{self.measured.units_total} units)"


class PublishedIndex:
    """Published numbers of one paper keyed by (table, dataset, category, method, setting, metric)."""

    def __init__(self, published: pd.DataFrame, paper: str) -> None:
        rows = published[published["paper"] == paper]
        keys = zip(
            *(rows[c] for c in ["table", "dataset", "category", "method", "setting", "metric"]), strict=True
        )
        self._values = dict(zip(keys, zip(rows["number"], rows["value"], strict=True), strict=True))

    def lookup(self, keys: Mapping[str, Any]) -> tuple[float, str] | None:
        category = published_category_of(keys)
        if category is None or "published_table" not in keys or "dataset" not in keys:
            return None
        key = (
            keys["published_table"], keys["dataset"], category, str(keys.get("method", "")),
            str(keys.get("setting", "")), keys.get("published_metric", keys["metric"]),
        )  # fmt: skip
        return self._values.get(key)


def load_inputs(
    paper: str,
    spec_path: str | os.PathLike,
    published_csv: str | os.PathLike,
    metrics_csv: str | os.PathLike,
    selected: Mapping[str, Collection[str]] | None,
) -> tuple[dict, PublishedIndex, MeasuredIndex]:
    """A paper's validated spec, its published numbers and the measured metrics, as tables and figures read them."""
    spec = load_spec(spec_path)
    return (
        spec,
        PublishedIndex(load_published(published_csv), paper),
        MeasuredIndex(load_metrics(metrics_csv), selected),
    )


def render_paper(
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
    """Write `<out_dir>/<paper>/<table>.{csv,md,html}` for every table of the spec (or those in `only`).

    `out_dir` is the tables root (results/tables). `selected` maps dataset -> configured units; units outside it
    do not count even if old metrics exist (None: every unit with metrics counts); `table_units` replaces it for
    the tables it names (table -> dataset -> units). A cell with no counting unit is "not run", one with only
    some of its units "partial" (shown with "(n/m units)", never compared or bold).
    """
    spec, published, measured = load_inputs(paper, spec_path, published_csv, metrics_csv, selected)
    paths: list[Path] = []
    for table in table_specs(spec):
        if only is not None and table.name not in only:
            continue
        units = (table_units or {}).get(table.name)
        grid = compute_table(table, published, measured if units is None else measured.restricted(units))
        stem = Path(out_dir) / paper / table.name
        paths.append(write_csv(stem.with_suffix(".csv"), cells_frame(table, grid)))
        paths.append(write_text(stem.with_suffix(".md"), to_markdown(table, grid, synthetic)))
        paths.append(write_text(stem.with_suffix(".html"), to_html(table, grid, synthetic)))
    return paths


def compute_table(table: TableSpec, published: PublishedIndex, measured: MeasuredIndex) -> list[list[Cell]]:
    """All cells of a table (rows x columns) with values, published numbers, precision and best marks."""
    row_index = {r.label: i for i, r in enumerate(table.rows)}
    column_index = {c.label: i for i, c in enumerate(table.columns)}
    cache: dict[tuple[int, int], Cell] = {}

    def cell(r: int, c: int) -> Cell:
        if (r, c) in cache:
            return cache[(r, c)]
        row, column = table.rows[r], table.columns[c]
        keys = table.cell_keys(row, column)
        parts = (
            [cell(row_index[label], c) for label in row.average_of]
            if row.average_of
            else [cell(r, column_index[label]) for label in column.average_of]
        )
        units_total = sum(p.units_total for p in parts) if parts else len(categories_of(keys))
        if parts:
            value, status = _average_of(parts)
        elif "experiment" not in keys:
            value, status = None, PUBLISHED_ONLY
        else:
            value = measured.lookup(keys)
            status = NOT_RUN if value is None else MEASURED if value.complete else PARTIAL
        pub = published.lookup(keys)
        cache[(r, c)] = Cell(
            row=row.label,
            column=column.label,
            keys=keys,
            status=status,
            measured=value,
            published=None if pub is None else pub[0],
            published_text=None if pub is None else pub[1],
            scale=100.0 if is_percent(keys) else 1.0,
            units_total=units_total,
        )
        return cache[(r, c)]

    grid = [[cell(r, c) for c in range(len(table.columns))] for r in range(len(table.rows))]
    _set_decimals(grid)
    _mark_best(table, grid)
    return grid


def _average_of(parts: list[Cell]) -> tuple[Measured | None, str]:
    """Mean of other cells; partial (over the cells with values, units counted) unless all are complete."""
    if all(p.status == PUBLISHED_ONLY for p in parts):
        return None, PUBLISHED_ONLY
    with_values = [p.measured for p in parts if p.status in (MEASURED, PARTIAL) and p.measured is not None]
    if not with_values:
        return None, NOT_RUN
    value = average(with_values, sum(p.units_total for p in parts))
    return value, MEASURED if value.complete else PARTIAL


def _printed_decimals(text: str) -> int:
    return len(text.partition(".")[2])


def _set_decimals(grid: list[list[Cell]]) -> None:
    """Explicit `decimals`, else as the cell's published value is printed, else its column's, else the table's."""
    printed = [
        [None if c.published_text is None else _printed_decimals(c.published_text) for c in row]
        for row in grid
    ]
    # counts (fp, fn, n_images) are printed as integers whatever the other metrics' precision: they do not set the default
    table_counts = Counter(
        d
        for cells, decimals in zip(grid, printed, strict=True)
        for cell, d in zip(cells, decimals, strict=True)
        if d is not None and cell.keys.get("metric") not in WHOLE_NUMBERS
    )
    table_default = table_counts.most_common(1)[0][0] if table_counts else DEFAULT_DECIMALS
    for c in range(len(grid[0])):
        column_counts = Counter(row[c] for row in printed if row[c] is not None)
        column_default = column_counts.most_common(1)[0][0] if column_counts else table_default
        for r, row in enumerate(grid):
            cell = row[c]
            own = printed[r][c]
            fallback = 0 if cell.keys.get("metric") in WHOLE_NUMBERS else column_default
            cell.decimals = int(cell.keys.get("decimals", own if own is not None else fallback))


def _mark_best(table: TableSpec, grid: list[list[Cell]]) -> None:
    """Mark the best measured (displayed) value among cells of one column (or row) that share a metric.

    Partial cells never compete: a value over fewer units is not comparable with a complete one."""
    lines = (
        [(column.best, [row[c] for row in grid]) for c, column in enumerate(table.columns)]
        if table.best_axis == "column"
        else [(row.best, grid[r]) for r, row in enumerate(table.rows)]
    )
    for line_best, cells in lines:
        by_metric: dict[str, list[Cell]] = {}
        for cell in cells:
            if cell.status == MEASURED and cell.rounded is not None:
                by_metric.setdefault(cell.keys["metric"], []).append(cell)
        for metric, candidates in by_metric.items():
            direction = line_best or table.best or ("min" if metric in NATURAL_UNITS else "max")
            if direction == "none":
                continue
            pick = max if direction == "max" else min
            best = pick(c.rounded for c in candidates)
            for cell in candidates:
                cell.best = cell.rounded == best


def cells_frame(table: TableSpec, grid: list[list[Cell]]) -> pd.DataFrame:
    """The long CSV: one row per cell, values in display units (percent or the metric's natural unit)."""
    records = []
    for cell in (c for row in grid for c in row):
        value = cell.display_value
        has_value = value is not None and not math.isnan(value)
        std = cell.measured.std * cell.scale if cell.measured is not None else float("nan")
        records.append(
            {
                "table": table.name,
                "row": cell.row,
                "column": cell.column,
                "dataset": cell.keys.get("dataset", ""),
                "category": ";".join(categories_of(cell.keys)),
                "experiment": cell.keys.get("experiment", ""),
                "metric": measured_metric(cell.keys) if "metric" in cell.keys else "",
                "aggregate": aggregate_of(cell.keys),
                "measured": round(value, 6) if has_value else None,
                "measured_std": None if math.isnan(std) else round(std, 6),
                "n_seeds": cell.measured.n_seeds if cell.measured is not None else None,
                "n_units": cell.measured.n_units if cell.measured is not None else None,
                "units_total": cell.measured.units_total if cell.measured is not None else None,
                "published": cell.published,
                "difference": round(value - cell.published, 6)
                if has_value and cell.published is not None and cell.status == MEASURED
                else None,
                "status": cell.status,
                "best": cell.best,
                "unit": cell.unit,
            }
        )
    frame = pd.DataFrame.from_records(records, columns=CSV_COLUMNS)
    for column in ("n_seeds", "n_units", "units_total"):
        frame[column] = frame[column].astype("Int64")
    return frame


def _number(value: float, decimals: int) -> str:
    return f"{round(value, decimals) + 0.0:.{decimals}f}"


def _signed(value: float, decimals: int) -> str:
    text = _number(abs(value), decimals)
    rounded = round(value, decimals)
    return ("+" if rounded > 0 else MINUS if rounded < 0 else "±") + text


def _cell_parts(cell: Cell) -> tuple[str, str]:
    """(main text, published note) of a cell, e.g. ("97.3", "pub. 98.1, −0.8") or ("41.0 (2/10 units)",
    "pub. 98.1"): a partial cell is not compared with the published value of all units."""
    if cell.status == PUBLISHED_ONLY:
        return ("pub. " + cell.published_text, "") if cell.published_text is not None else ("—", "")
    note = "" if cell.published_text is None else f"pub. {cell.published_text}"
    if cell.status == NOT_RUN:
        return "not run", note
    rounded = cell.rounded
    main = "n/a" if rounded is None else _number(rounded, cell.decimals)
    if cell.status == PARTIAL:
        return f"{main} {cell.units_marker}", note
    if rounded is not None and cell.published is not None:
        note += ", " + _signed(rounded - cell.published, cell.decimals)
    return main, note


def _legend(table: TableSpec, grid: list[list[Cell]]) -> str:
    units = sorted(
        {f"{c.keys['metric']} in {c.unit}" for row in grid for c in row if c.scale == 1 and c.unit}
    )
    unit_text = "values in %" + (f" except {', '.join(units)}" if units else "")
    summed = sorted({c.keys["metric"] for row in grid for c in row if aggregate_of(c.keys) == "sum"})
    sum_text = f"; {', '.join(summed)} summed over the cell's units" if summed else ""
    pooled = sorted({c.keys["metric"] for row in grid for c in row if aggregate_of(c.keys) == "pooled"})
    if pooled:
        sum_text += (
            f"; {', '.join(pooled)} from one confusion matrix: the pixel counts summed over the cell's units"
        )
    along = "column" if table.best_axis == "column" else "row"
    return (
        f"Cells: measured (pub. published, measured − published); {unit_text}; measured = mean over seeds "
        f"of each unit, then the mean over the cell's units{sum_text} (the CSV lists the std and number of "
        f"seeds and units). Bold: best measured value per {along} and metric. “(n/m units)”: partial, only n "
        "of the cell's m units are configured and measured, so the value is over those n and is not compared "
        "with the published one. “not run”: the cell's runs are not configured or have no metrics. "
        "“pub. x”: published only."
    )


def to_markdown(table: TableSpec, grid: list[list[Cell]], synthetic: bool) -> str:
    def escape(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [f"> **{BANNER}**", ""] if synthetic else []
    lines += [f"### {escape(table.title)}", ""]
    if table.caption:
        lines += [table.caption, ""]
    lines.append(
        "| " + " | ".join(escape(h) for h in [table.row_header] + [c.label for c in table.columns]) + " |"
    )
    lines.append("|" + "---|" + "---:|" * len(table.columns))
    for row_spec, row in zip(table.rows, grid, strict=True):
        texts = []
        for cell in row:
            main, note = _cell_parts(cell)
            main = (
                f"**{main}**" if cell.best else (f"*{main}*" if cell.status in (NOT_RUN, PARTIAL) else main)
            )
            texts.append(escape(main + (f" ({note})" if note else "")))
        label = f"*{escape(row_spec.label)}*" if row_spec.average_of else escape(row_spec.label)
        lines.append("| " + " | ".join([label, *texts]) + " |")
    lines += ["", _legend(table, grid), ""]
    return "\n".join(lines)


_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 1.5em; color: #222; }
.banner { background: #fff3cd; border: 1px solid #e0b000; color: #7a5a00; padding: 0.6em 1em; margin-bottom: 1em;
  font-weight: bold; border-radius: 4px; }
h2 { font-size: 1.15em; margin: 0 0 0.4em 0; }
.caption, .legend { font-size: 0.85em; color: #555; max-width: 70em; }
table.db { border-collapse: collapse; font-size: 0.9em; margin: 0.6em 0; }
table.db th, table.db td { border: 1px solid #ccc; padding: 0.3em 0.6em; white-space: nowrap; }
table.db thead th { background: #f0f2f5; text-align: center; }
table.db tbody th { text-align: left; font-weight: normal; background: #fafafa; }
table.db td { text-align: right; font-variant-numeric: tabular-nums; }
table.db tr.avg th, table.db tr.avg td { border-top: 2px solid #888; font-style: italic; }
td.best .m { font-weight: bold; }
td.notrun { color: #999; font-style: italic; }
td.partial { color: #7a5a00; font-style: italic; }
td.pubonly { color: #666; background: #f7f7f7; }
.pub { color: #777; font-size: 0.85em; }
.neg { color: #b00020; }
.pos { color: #1b7a2c; }
"""


def to_html(table: TableSpec, grid: list[list[Cell]], synthetic: bool) -> str:
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(table.title)}</title>",
        f"<style>{_CSS}</style>",
        "</head><body>",
    ]
    if synthetic:
        out.append(f'<div class="banner">{esc(BANNER)}</div>')
    out.append(f"<h2>{esc(table.title)}</h2>")
    if table.caption:
        out.append(f'<p class="caption">{esc(table.caption)}</p>')
    out.append('<table class="db"><thead><tr>')
    out.append("".join(f"<th>{esc(h)}</th>" for h in [table.row_header] + [c.label for c in table.columns]))
    out.append("</tr></thead><tbody>")
    for row_spec, row in zip(table.rows, grid, strict=True):
        css_row = ' class="avg"' if row_spec.average_of else ""
        out.append(f'<tr{css_row}><th scope="row">{esc(row_spec.label)}</th>')
        out.append("".join(_html_cell(cell) for cell in row))
        out.append("</tr>")
    out.append("</tbody></table>")
    out.append(f'<p class="legend">{esc(_legend(table, grid))}</p>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _html_cell(cell: Cell) -> str:
    esc = html.escape
    main, note = _cell_parts(cell)
    classes = {MEASURED: "measured", PARTIAL: "partial", NOT_RUN: "notrun", PUBLISHED_ONLY: "pubonly"}[
        cell.status
    ]
    if cell.best:
        classes += " best"
    details = [f"{k}={v}" for k, v in sorted(cell.keys.items()) if k in ("dataset", "experiment", "metric")]
    details.append("category=" + ";".join(categories_of(cell.keys)))
    if cell.measured is not None:
        details.append(f"seeds={cell.measured.n_seeds}")
        details.append(
            f"units={cell.measured.n_units}/{cell.measured.units_total} ({aggregate_of(cell.keys)})"
        )
        if not math.isnan(cell.measured.std):
            details.append(f"std={_number(cell.measured.std * cell.scale, cell.decimals + 1)}")
    note_html = ""
    if note:
        text, _, diff = note.partition(", ")
        text = esc(text)
        if diff:
            sign = "neg" if diff.startswith(MINUS) else "pos" if diff.startswith("+") else ""
            text += f', <span class="{sign}">{esc(diff)}</span>' if sign else f", {esc(diff)}"
        note_html = f' <span class="pub">({text})</span>'
    return f'<td class="{classes}" title="{esc("; ".join(details))}"><span class="m">{esc(main)}</span>{note_html}</td>'
