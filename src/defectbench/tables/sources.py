"""The two CSV inputs of the tables: published numbers and collected metrics, checked against their schemas."""

from __future__ import annotations

import copy
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from defectbench.tables.spec import (
    NATURAL_UNITS,
    WHOLE_NUMBERS,
    TableInputError,
    aggregate_of,
    base_metric,
    categories_of,
    load_schema,
    measured_metric,
)

PUBLISHED_KEY = ["paper", "table", "dataset", "category", "method", "setting", "metric"]
UNIT_KEY = ["experiment", "dataset", "category", "metric"]


def load_published(path: str | os.PathLike) -> pd.DataFrame:
    """Published numbers as text plus a float `number` column; raise TableInputError naming file and row."""
    frame = _read_checked(Path(path), "published", "published numbers (config/published/<paper>.csv)")
    duplicated = frame[frame.duplicated(PUBLISHED_KEY, keep=False)]
    if not duplicated.empty:
        first = duplicated.iloc[0]
        same = duplicated[(duplicated[PUBLISHED_KEY] == first[PUBLISHED_KEY]).all(axis=1)]
        lines = ", ".join(str(i + 2) for i in same.index)
        key = ", ".join(f"{k}={first[k]!r}" for k in PUBLISHED_KEY)
        raise TableInputError(
            f"{path}: rows {lines} repeat the key ({key}); keep one of them (each printed number once)"
        )
    frame["number"] = frame["value"].astype(float)
    return frame


def load_metrics(path: str | os.PathLike) -> pd.DataFrame:
    """Collected metrics with `seed` as int and `value` as float; one row per (unit, seed, metric)."""
    frame = _read_checked(Path(path), "metrics", "collected metrics (results/metrics.csv)")
    frame["seed"] = frame["seed"].astype(int)
    frame["value"] = frame["value"].replace("", "nan").astype(float)
    base = frame["metric"].map(base_metric)
    fraction = ~base.isin(list(NATURAL_UNITS)) & ~frame["value"].between(0.0, 1.0) & frame["value"].notna()
    if fraction.any():
        row = int(np.flatnonzero(fraction.to_numpy())[0])
        raise TableInputError(
            f"{path}: row {row + 2} has {frame['metric'].iloc[row]} = {frame['value'].iloc[row]}, outside [0, 1]; "
            "metrics.json values are fractions, never percent: fix the evaluator and re-run it"
        )
    values = frame["value"]
    not_a_count = base.isin(list(WHOLE_NUMBERS)) & values.notna() & ((values < 0) | (values % 1 != 0))
    if not_a_count.any():
        row = int(np.flatnonzero(not_a_count.to_numpy())[0])
        raise TableInputError(
            f"{path}: row {row + 2} has {frame['metric'].iloc[row]} = {values.iloc[row]}; "
            f"{', '.join(WHOLE_NUMBERS)} are image or pixel counts of one run (whole numbers >= 0): "
            "fix the evaluator and re-run it"
        )
    key = ["dataset", "category", "experiment", "seed", "metric"]
    duplicated = frame.duplicated(key, keep="first")
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise TableInputError(
            f"{path}: row {row + 2} repeats ({', '.join(f'{k}={frame[k].iloc[row]!r}' for k in key)}); "
            "collect each metrics.json once"
        )
    return frame


@dataclass(frozen=True)
class Measured:
    """A cell's measured value in [0, 1] (or natural units) with its per-seed values.

    `n_units` of the cell's `units_total` evaluation units were measured; the value aggregates those only, so a
    cell with n_units < units_total is partial (a mean or sum over fewer units than the paper's)."""

    value: float
    std: float
    n_seeds: int
    per_seed: dict[int, float]
    n_units: int = 1
    units_total: int = 1

    @property
    def complete(self) -> bool:
        return self.n_units == self.units_total


class MeasuredIndex:
    """Lookup of measured values per unit; `selected` (dataset -> units) limits which units count as run."""

    def __init__(self, metrics: pd.DataFrame, selected: Mapping[str, Collection[str]] | None = None) -> None:
        self._units: dict[tuple[str, str, str, str], dict[int, float]] = {}
        ordered = metrics.sort_values([*UNIT_KEY, "seed"], kind="stable")
        for key, group in ordered.groupby(UNIT_KEY, sort=False):
            self._units[tuple(key)] = dict(zip(group["seed"].tolist(), group["value"].tolist(), strict=True))
        self._selected = None if selected is None else {d: set(units) for d, units in selected.items()}

    def restricted(self, selected: Mapping[str, Collection[str]]) -> MeasuredIndex:
        """The same measurements with other selected units (one table's `table_units` of the config)."""
        view = copy.copy(self)
        view._selected = {d: set(units) for d, units in selected.items()}
        return view

    def lookup(self, keys: Mapping[str, Any]) -> Measured | None:
        """The cell's `aggregate` (mean or sum) over its units of each unit's mean over seeds.

        Only units that are selected and have runs count; None ("not run") when there is none. When only some
        units count, the result says so (n_units < units_total) and aggregates those units only.
        """
        if "experiment" not in keys:
            return None
        dataset, categories = keys["dataset"], categories_of(keys)
        if self._selected is not None:
            configured = self._selected.get(dataset, set())
            categories_run = [c for c in categories if c in configured]
        else:
            categories_run = categories
        if aggregate_of(keys) == "pooled":
            return self._pooled(keys, categories_run, len(categories))
        metric = measured_metric(keys)
        found = [self._units.get((keys["experiment"], dataset, c, metric)) for c in categories_run]
        units = [u for u in found if u is not None]
        if not units:
            return None
        combine = np.sum if aggregate_of(keys) == "sum" else np.mean
        value = float(combine([np.mean(list(u.values())) for u in units]))
        common = sorted(set.intersection(*(set(u) for u in units)))
        per_seed = {s: float(combine([u[s] for u in units])) for s in common}
        n_seeds = min(len(u) for u in units)
        return Measured(value, seed_std(per_seed), n_seeds, per_seed, len(units), len(categories))

    def _pooled(self, keys: Mapping[str, Any], categories: list[str], units_total: int) -> Measured | None:
        """A segmentation ratio of one confusion matrix: each seed's pixel counts summed over the units."""
        counts = []
        for category in categories:
            unit = [self._units.get((keys["experiment"], keys["dataset"], category, m)) for m in PIXEL_COUNTS]
            if all(u is not None for u in unit):
                counts.append(unit)
        if not counts:
            return None
        seeds = sorted(set.intersection(*(set(u) for unit in counts for u in unit)))
        if not seeds:
            return None
        per_seed = {
            seed: pooled_ratio(keys["metric"], *(sum(unit[k][seed] for unit in counts) for k in range(4)))
            for seed in seeds
        }
        value = float(np.mean(list(per_seed.values())))
        return Measured(value, seed_std(per_seed), len(seeds), per_seed, len(counts), units_total)


PIXEL_COUNTS = ("px_tp", "px_fp", "px_fn", "px_tn")


def pooled_ratio(metric: str, tp: float, fp: float, fn: float, tn: float) -> float:
    """iou, miou, precision, recall or f1 of summed pixel counts (NaN where a denominator is zero)."""

    def ratio(numerator: float, denominator: float) -> float:
        return numerator / denominator if denominator > 0 else float("nan")

    formulas = {
        "iou": lambda: ratio(tp, tp + fp + fn),
        "miou": lambda: (ratio(tp, tp + fp + fn) + ratio(tn, tn + fp + fn)) / 2,
        "precision": lambda: ratio(tp, tp + fp),
        "recall": lambda: ratio(tp, tp + fn),
        "f1": lambda: ratio(2 * tp, 2 * tp + fp + fn),
    }
    if metric not in formulas:
        raise TableInputError(f"a `pooled` cell needs one of {sorted(formulas)}, not {metric!r}")
    return float(formulas[metric]())


def average(parts: list[Measured], units_total: int | None = None) -> Measured:
    """The mean of several cells (an `average_of` row or column), per seed where the seeds agree.

    `units_total`: the units of all the averaged cells, measured or not (default: those of `parts`)."""
    common = sorted(set.intersection(*(set(p.per_seed) for p in parts)))
    per_seed = {s: float(np.mean([p.per_seed[s] for p in parts])) for s in common}
    value = float(np.mean([p.value for p in parts]))
    n_units = sum(p.n_units for p in parts)
    total = sum(p.units_total for p in parts) if units_total is None else units_total
    return Measured(value, seed_std(per_seed), min(p.n_seeds for p in parts), per_seed, n_units, total)


def seed_std(per_seed: Mapping[int, float]) -> float:
    """Sample standard deviation over seeds; NaN with fewer than two seeds."""
    values = np.fromiter(per_seed.values(), dtype=float)
    return float(values.std(ddof=1)) if values.size >= 2 else float("nan")


def _read_checked(path: Path, schema_name: str, what: str) -> pd.DataFrame:
    """Read a CSV as text and check it against the row schema's required columns and property types."""
    if not path.exists():
        raise TableInputError(f"{what} {path} does not exist; run the workflow rule that makes it")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise TableInputError(f"{path}: cannot parse as CSV ({err}); fix or regenerate the file") from err
    schema = load_schema(schema_name)
    missing = [c for c in schema["required"] if c not in frame.columns]
    if missing:
        raise TableInputError(
            f"{path}: missing columns {missing}; {what} need the columns {schema['required']}"
        )
    for column in schema["required"]:  # other columns are documented only: the tables ignore them
        rules = schema["properties"][column]
        bad = ~_matches(frame[column], rules)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise TableInputError(
                f"{path}: row {row + 2}, column {column!r}: {frame[column].iloc[row]!r} is not "
                f"{_describe(rules)}; fix that row"
            )
    return frame


def _matches(text: pd.Series, rules: Mapping[str, Any]) -> pd.Series:
    """Vectorised check of CSV text against the schema keywords used in workflow/schemas (one column)."""
    ok = pd.Series(True, index=text.index)
    kind = rules.get("type", "string")
    if kind in ("integer", "number"):
        # an empty number is NaN (pandas writes NaN so), e.g. AP of a unit without defective images
        pattern = r"-?\d+" if kind == "integer" else r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|nan|NaN|"
        ok &= text.str.fullmatch(pattern)
        numbers = pd.to_numeric(text.where(ok), errors="coerce")
        if "minimum" in rules:
            ok &= ~(numbers < rules["minimum"])
        if "maximum" in rules:
            ok &= ~(numbers > rules["maximum"])
    if "minLength" in rules:
        ok &= text.str.len() >= rules["minLength"]
    if "pattern" in rules:
        ok &= text.str.fullmatch(rules["pattern"].removeprefix("^").removesuffix("$"))
    if "enum" in rules:
        ok &= text.isin(rules["enum"])
    return ok.astype(bool)


def _describe(rules: Mapping[str, Any]) -> str:
    parts = [f"a {rules.get('type', 'string')}"]
    if "enum" in rules:
        parts.append(f"one of {rules['enum']}")
    if "pattern" in rules:
        parts.append(f"matching {rules['pattern']!r}")
    if "minLength" in rules:
        parts.append("non-empty")
    if "minimum" in rules:
        parts.append(f">= {rules['minimum']}")
    return ", ".join(parts)
