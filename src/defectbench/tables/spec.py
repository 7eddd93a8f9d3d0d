"""Table and figure specs (config/tables/<paper>.yaml): validation, cell keys and the runs a spec needs."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from defectbench.data.images import DataError
from defectbench.io import load_yaml

SCHEMA_DIR = Path(__file__).resolve().parents[3] / "workflow" / "schemas"

# Image counts, = defectbench.metrics.COUNT_METRICS and the metrics schema's count_metric (tests check both; not
# imported so that the tables do not load the metrics' scipy code).
COUNT_METRICS = ("fp", "fn", "px_tp", "px_fp", "px_fn", "px_tn")
# Whole numbers: the counts above and the images per label of a split (RFL+RIS Tables 1-2).
WHOLE_NUMBERS = (*COUNT_METRICS, "n_images")
# Metrics shown in their own unit (ms, clicks, images, pixels) rather than as a percentage of [0, 1].
NATURAL_UNITS = (
    {"latency_ms": "ms", "noc85": "clicks", "noc90": "clicks", "n_images": "images"}
    | dict.fromkeys(COUNT_METRICS[:2], "images")
    | dict.fromkeys(COUNT_METRICS[2:], "pixels")
)
# `pooled` cells recompute these from the pixel counts summed over their units (one confusion matrix)
POOLED_METRICS = ("iou", "miou", "precision", "recall", "f1")


def base_metric(name: str) -> str:
    """`box_ap` of a qualified metric name such as `box_ap:D00` or `n_images:train:D00`."""
    return name.partition(":")[0]


def measured_metric(keys: Mapping[str, Any]) -> str:
    """The metric name a cell reads from results/metrics.csv: `metric`, qualified by `subset` and `class`.

    `n_images` + subset train + class D00 -> `n_images:train:D00`; `box_ap` + class D00 -> `box_ap:D00`."""
    parts = [keys["metric"], keys.get("subset"), keys.get("class")]
    return ":".join(str(part) for part in parts if part is not None)


def published_category_of(keys: Mapping[str, Any]) -> str | None:
    """The category a cell's published number is printed under: `published_category`, else its `class`
    (RDD damage classes are the paper's columns), else its single `category`."""
    for key in ("published_category", "class"):
        if key in keys:
            return str(keys[key])
    category = keys.get("category")
    return category if isinstance(category, str) else None


class TableInputError(DataError, ValueError):
    """A spec, published CSV or metrics CSV is malformed; the message names the file and the key or row."""


@cache
def load_schema(name: str) -> dict:
    """The JSON schema `workflow/schemas/<name>.schema.yaml` of the repository this package lives in."""
    path = SCHEMA_DIR / f"{name}.schema.yaml"
    if not path.exists():
        raise FileNotFoundError(f"schema {path} is missing; defectbench must run from its source tree")
    with open(path) as handle:
        return load_yaml(handle)


def is_percent(keys: Mapping[str, Any]) -> bool:
    """Whether a cell's metric is shown as a percentage (values in [0, 1] times 100)."""
    return bool(keys.get("percent", keys.get("metric") not in NATURAL_UNITS))


def aggregate_of(keys: Mapping[str, Any]) -> str:
    """How a cell combines its units: `mean` (default), `sum` (counts such as SegDecNet's FP/FN totals) or
    `pooled` (segmentation ratios of one confusion matrix summed over the units, as RA-CAM's KSDD tables)."""
    return str(keys.get("aggregate", "mean"))


def categories_of(keys: Mapping[str, Any]) -> list[str]:
    """The evaluation units of a cell: its `category` as a list (default: the dataset's name, DEVELOPING.md)."""
    category = keys.get("category")
    if category is None:
        return [keys["dataset"]] if "dataset" in keys else []
    return [category] if isinstance(category, str) else list(category)


@dataclass(frozen=True)
class GridEntry:
    """One row or column of a table; `keys` are its cell keys (label, average_of and best removed)."""

    label: str
    keys: dict
    average_of: tuple[str, ...] = ()
    best: str | None = None


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    rows: list[GridEntry]
    columns: list[GridEntry]
    defaults: dict = field(default_factory=dict)
    caption: str = ""
    row_header: str = ""
    best: str | None = None
    best_axis: str = "column"

    def cell_keys(self, row: GridEntry, column: GridEntry) -> dict:
        """Defaults updated with the row's keys, then the column's (column wins); `experiment_by_setting` (a row
        variant measured under each column's setting) becomes the cell's `experiment` for its `setting`."""
        keys = {**self.defaults, **row.keys, **column.keys}
        by_setting = keys.pop("experiment_by_setting", None)
        if by_setting and str(keys.get("setting")) in by_setting:
            keys["experiment"] = by_setting[str(keys["setting"])]
        return keys


def table_specs(spec: Mapping[str, Any]) -> list[TableSpec]:
    """The tables of a loaded spec, in file order."""
    return [_table_spec(name, table) for name, table in (spec.get("tables") or {}).items()]


def figure_points(figure: Mapping[str, Any]) -> Iterator[tuple[int, int, dict]]:
    """(series index, point index, cell keys) of every point of a figure spec."""
    defaults = dict(figure.get("defaults") or {})
    if "published_table" in figure:
        defaults.setdefault("published_table", figure["published_table"])
    for s_index, series in enumerate(figure["series"]):
        series_keys = {k: v for k, v in series.items() if k not in ("label", "points")}
        for p_index, point in enumerate(series["points"]):
            keys = {**defaults, **series_keys, **{k: v for k, v in point.items() if k != "x"}}
            if "published_setting" in keys:
                keys["setting"] = keys.pop("published_setting")
            yield s_index, p_index, keys


def load_spec(path: str | os.PathLike) -> dict:
    """Read and validate a table spec; raise TableInputError (a ValueError) naming the file and the key path."""
    path = Path(path)
    if not path.exists():
        raise TableInputError(
            f"table spec {path} does not exist; write it (see docs/DEVELOPING.md, Table specs)"
        )
    try:
        with open(path) as handle:
            spec = load_yaml(handle)
    except yaml.YAMLError as err:
        raise TableInputError(f"{path}: not valid YAML ({err})") from err
    validator = jsonschema.Draft202012Validator(load_schema("tables"))
    errors = sorted(validator.iter_errors(spec), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = [f"  at {_key_path(e.absolute_path)}: {_error_message(e)}" for e in errors[:5]]
        more = f"\n  ... and {len(errors) - 5} more" if len(errors) > 5 else ""
        raise TableInputError(f"{path}: invalid table spec\n" + "\n".join(lines) + more)
    problems = _semantic_problems(spec)
    if problems:
        raise TableInputError(f"{path}: invalid table spec\n" + "\n".join(f"  {p}" for p in problems))
    return spec


def table_names(path: str | os.PathLike) -> list[str]:
    """Names of the tables of a spec file (validated), in file order: the workflow's table outputs."""
    return list(load_spec(path).get("tables") or {})


def figure_names(path: str | os.PathLike) -> list[str]:
    """Names of the figures of a spec file (validated), in file order."""
    return list(load_spec(path).get("figures") or {})


def cells_by_output(spec: Mapping[str, Any] | str | os.PathLike) -> dict[str, set[tuple[str, str, str]]]:
    """(experiment, dataset, category) units each table and figure of a spec needs, by table/figure name."""
    if not isinstance(spec, Mapping):
        spec = load_spec(spec)

    def units(keys: Mapping[str, Any]) -> set[tuple[str, str, str]]:
        if "experiment" not in keys:
            return set()
        return {(keys["experiment"], keys["dataset"], c) for c in categories_of(keys)}

    outputs: dict[str, set[tuple[str, str, str]]] = {}
    for table in table_specs(spec):
        outputs[table.name] = set()
        for row in table.rows:
            for column in table.columns:
                if not row.average_of and not column.average_of:
                    outputs[table.name] |= units(table.cell_keys(row, column))
    for name, figure in (spec.get("figures") or {}).items():
        outputs.setdefault(name, set()).update(*(units(keys) for _, _, keys in figure_points(figure)))
    return outputs


def required_cells(spec: Mapping[str, Any] | str | os.PathLike) -> list[dict]:
    """Every (experiment, dataset, category) unit a spec's tables and figures need, sorted and unique."""
    units = set().union(*cells_by_output(spec).values())
    return [{"experiment": e, "dataset": d, "category": c} for e, d, c in sorted(units)]


def _table_spec(name: str, table: Mapping[str, Any]) -> TableSpec:
    defaults = dict(table.get("defaults") or {})
    if "published_table" in table:
        defaults.setdefault("published_table", table["published_table"])
    return TableSpec(
        name=name,
        title=table["title"],
        rows=[_grid_entry(entry) for entry in table["rows"]],
        columns=[_grid_entry(entry) for entry in table["columns"]],
        defaults=defaults,
        caption=table.get("caption", ""),
        row_header=table.get("row_header", ""),
        best=table.get("best"),
        best_axis=table.get("best_axis", "column"),
    )


def _grid_entry(entry: Mapping[str, Any]) -> GridEntry:
    keys = {k: v for k, v in entry.items() if k not in ("label", "average_of", "best")}
    return GridEntry(entry["label"], keys, tuple(entry.get("average_of", ())), entry.get("best"))


def _key_path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _error_message(error: jsonschema.ValidationError) -> str:
    if error.validator == "oneOf" and error.context:
        return "; ".join(sorted({e.message for e in error.context}))
    return error.message


def _semantic_problems(spec: Mapping[str, Any]) -> list[str]:
    """What the JSON schema cannot express: unique labels, average_of references, complete cell keys."""
    problems: list[str] = []
    for table in table_specs(spec):
        where = f"tables.{table.name}"
        for axis, entries in (("rows", table.rows), ("columns", table.columns)):
            labels = [e.label for e in entries]
            duplicates = sorted({label for label in labels if labels.count(label) > 1})
            if duplicates:
                problems.append(f"at {where}.{axis}: duplicate labels {duplicates}")
            problems += _average_problems(f"{where}.{axis}", entries)
        for r, row in enumerate(table.rows):
            for c, column in enumerate(table.columns):
                keys = table.cell_keys(row, column)
                needed = (
                    ["metric"] if row.average_of or column.average_of else ["dataset", "category", "metric"]
                )
                missing = [k for k in needed if k not in keys]
                if missing:
                    problems.append(
                        f"at {where}.rows[{r}] x columns[{c}] ({row.label!r} x {column.label!r}): cell lacks "
                        f"{missing}; set them in defaults, the row or the column"
                    )
                if aggregate_of(keys) == "pooled" and keys.get("metric") not in POOLED_METRICS:
                    problems.append(
                        f"at {where}.rows[{r}] x columns[{c}]: a `pooled` cell needs one of {list(POOLED_METRICS)}"
                    )
    for name, figure in (spec.get("figures") or {}).items():
        for s, p, keys in figure_points(figure):
            missing = [k for k in ("dataset", "category", "metric") if k not in keys]
            if missing:
                problems.append(
                    f"at figures.{name}.series[{s}].points[{p}]: point lacks {missing}; "
                    "set them in defaults, the series or the point"
                )
            if aggregate_of(keys) == "pooled" and keys.get("metric") not in POOLED_METRICS:
                problems.append(
                    f"at figures.{name}.series[{s}].points[{p}]: `pooled` needs {list(POOLED_METRICS)}"
                )
    return problems


def _average_problems(where: str, entries: list[GridEntry]) -> list[str]:
    index = {e.label: i for i, e in enumerate(entries)}
    problems = []
    for i, entry in enumerate(entries):
        unknown = [label for label in entry.average_of if label not in index]
        if unknown:
            problems.append(f"at {where}[{i}].average_of: unknown labels {unknown}")
    if problems:
        return problems
    state: dict[str, str] = {}

    def visit(label: str, trail: list[str]) -> None:
        if state.get(label) == "done":
            return
        if state.get(label) == "active":
            raise _Cycle([*trail, label])
        state[label] = "active"
        for ref in entries[index[label]].average_of:
            visit(ref, [*trail, label])
        state[label] = "done"

    try:
        for entry in entries:
            visit(entry.label, [])
    except _Cycle as cycle:
        problems.append(f"at {where}: average_of cycle {' -> '.join(cycle.args[0])}")
    return problems


class _Cycle(Exception):
    pass
