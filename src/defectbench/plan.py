"""The run plan: which (dataset, unit, experiment, seed) runs the configured papers' tables and figures need."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from defectbench import paths
from defectbench.config import ConfigError
from defectbench.experiments import CONFIG_DIR, load_experiments


@dataclass(frozen=True, order=True)
class Run:
    """One trained-and-evaluated unit: results/runs/<dataset>/<category>/<experiment>/seed<k>/."""

    dataset: str
    category: str
    experiment: str
    seed: int

    @property
    def directory(self) -> Path:
        return Path(paths.RUN_DIR.format(**self.__dict__))


def selected(name: str, include: Iterable[str], exclude: Iterable[str]) -> bool:
    """Whether an experiment name matches the config's `experiments` globs and none of `exclude_experiments`."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in include) and not any(
        fnmatch.fnmatchcase(name, pattern) for pattern in exclude
    )


def excluded_unit(config: Mapping[str, Any], name: str, dataset: str, category: str) -> bool:
    """Whether the config's `exclude_units` skips experiment `name` on this unit (the demo runs ablations on fewer
    units than the main rows; their cells show "(n/m units)")."""
    return any(
        fnmatch.fnmatchcase(name, rule["experiments"])
        and rule["dataset"] == dataset
        and category in rule["categories"]
        for rule in config.get("exclude_units", [])
    )


def check_patterns(config: Mapping[str, Any], names: Iterable[str]) -> None:
    """A pattern of `experiments`/`exclude_experiments`/`exclude_units` that matches no experiment is a typo: name
    the closest."""
    names = sorted(names)
    unit_patterns = [rule["experiments"] for rule in config.get("exclude_units", [])]
    for key, patterns in (*((k, config.get(k, [])) for k in ("experiments", "exclude_experiments")),
                          ("exclude_units", unit_patterns)):  # fmt: skip
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
                close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.6)
                raise ConfigError(
                    f"invalid config: {key}: {pattern!r} matches no experiment; closest: "
                    f"{', '.join(close) or 'none'} (experiments are named in config/experiments/*.yaml)"
                )


def wanted_cells(config: Mapping[str, Any], config_dir: Path = CONFIG_DIR) -> set[tuple[str, str, str]]:
    """(dataset, unit, experiment) of every table cell of the configured papers, before any filtering.

    A cell naming an unknown experiment, or a dataset its experiment does not list in `datasets:`, is an error."""
    from defectbench.tables.spec import required_cells

    experiments = load_experiments(config_dir)
    cells = set()
    for paper in config["papers"]:
        spec = config_dir / "tables" / f"{paper}.yaml"
        for cell in required_cells(spec):
            name, dataset, category = cell["experiment"], cell["dataset"], cell["category"]
            if name not in experiments:
                raise ValueError(f"{spec} names an unknown experiment {name!r}")
            if dataset not in experiments[name]["datasets"]:
                raise ValueError(
                    f"{spec} runs experiment {name!r} on {dataset}, which its `datasets:` "
                    f"{experiments[name]['datasets']} does not list; fix the table or the experiment"
                )
            cells.add((dataset, category, name))
    return cells


def planned_runs(config: Mapping[str, Any], config_dir: Path = CONFIG_DIR) -> list[Run]:
    """The runs the configured papers' tables and figures need, restricted to the configured datasets,
    categories, experiments and seeds, plus the upstream runs they depend on."""
    experiments = load_experiments(config_dir)
    check_patterns(config, experiments)
    include = config.get("experiments", ["*"])
    exclude = config.get("exclude_experiments", [])
    datasets = config["datasets"]
    wanted = {
        (dataset, category, name)
        for dataset, category, name in wanted_cells(config, config_dir)
        if selected(name, include, exclude)
        and category in datasets.get(dataset, {}).get("categories", ())
        and not excluded_unit(config, name, dataset, category)
    }
    pending = list(wanted)
    while pending:  # add upstream runs (an upstream is needed even if the config filters it out)
        dataset, category, name = pending.pop()
        upstream = experiments[name].get("upstream")
        if upstream and (dataset, category, upstream) not in wanted:
            wanted.add((dataset, category, upstream))
            pending.append((dataset, category, upstream))
    return sorted(Run(d, c, e, seed) for d, c, e in wanted for seed in config["seeds"])
