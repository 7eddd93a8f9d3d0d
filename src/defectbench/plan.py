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


def check_patterns(config: Mapping[str, Any], names: Iterable[str]) -> None:
    """A pattern of `experiments`/`exclude_experiments` that matches no experiment is a typo: name the closest."""
    names = sorted(names)
    for key in ("experiments", "exclude_experiments"):
        for pattern in config.get(key, []):
            if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
                close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.6)
                raise ConfigError(
                    f"invalid config: {key}: {pattern!r} matches no experiment; closest: "
                    f"{', '.join(close) or 'none'} (experiments are named in config/experiments/*.yaml)"
                )


def selected_units(config: Mapping[str, Any], paper: str = "", output: str = "") -> dict[str, list[str]]:
    """dataset -> the units a table or figure counts: the dataset's configured `categories`, narrowed for one
    output by `table_units: {<paper>/<output>: {<dataset>: [units]}}` (the demo runs analysis tables on fewer
    units, so that all rows of such a table are measured on the same units). A unit there that the dataset does
    not have is an error; one the config leaves out of `categories` is simply not run."""
    from defectbench.data.datasets import get_dataset

    units = {name: list(settings["categories"]) for name, settings in config["datasets"].items()}
    for dataset, chosen in config.get("table_units", {}).get(f"{paper}/{output}", {}).items():
        unknown = sorted(set(chosen) - set(get_dataset(dataset).units))
        if unknown:
            raise ConfigError(
                f"invalid config: table_units: {paper}/{output}: {dataset} has no units {unknown}; "
                f"valid: {', '.join(get_dataset(dataset).units)}"
            )
        units[dataset] = [unit for unit in units.get(dataset, []) if unit in chosen]
    return units


def wanted_cells(
    config: Mapping[str, Any], config_dir: Path = CONFIG_DIR
) -> set[tuple[str, str, str, str, str]]:
    """(paper, table or figure, dataset, unit, experiment) of every table cell of the configured papers, before
    any filtering.

    A cell naming an unknown experiment, or a dataset its experiment does not list in `datasets:`, is an error,
    and so is a `table_units` entry naming no table or figure of its paper (when that paper is configured)."""
    from defectbench.tables.spec import cells_by_output

    experiments = load_experiments(config_dir)
    cells = set()
    for paper in config["papers"]:
        spec = config_dir / "tables" / f"{paper}.yaml"
        for output, units in cells_by_output(spec).items():
            for name, dataset, category in units:
                if name not in experiments:
                    raise ValueError(f"{spec} names an unknown experiment {name!r}")
                if dataset not in experiments[name]["datasets"]:
                    raise ValueError(
                        f"{spec} runs experiment {name!r} on {dataset}, which its `datasets:` "
                        f"{experiments[name]['datasets']} does not list; fix the table or the experiment"
                    )
                cells.add((paper, output, dataset, category, name))
    outputs = {f"{paper}/{output}" for paper, output, *_ in cells}
    for key in config.get("table_units", {}):
        if key.split("/", 1)[0] in config["papers"] and key not in outputs:
            close = difflib.get_close_matches(key, sorted(outputs), n=3, cutoff=0.6)
            raise ConfigError(
                f"invalid config: table_units: {key!r} names no table or figure of the configured papers "
                f"(<paper>/<table>); closest: {', '.join(close) or 'none'}"
            )
    return cells


def planned_runs(config: Mapping[str, Any], config_dir: Path = CONFIG_DIR) -> list[Run]:
    """The runs the configured papers' tables and figures need, restricted to the configured datasets,
    categories, experiments and seeds, plus the upstream runs they depend on."""
    experiments = load_experiments(config_dir)
    check_patterns(config, experiments)
    include = config.get("experiments", ["*"])
    exclude = config.get("exclude_experiments", [])
    wanted = {
        (dataset, category, name)
        for paper, output, dataset, category, name in wanted_cells(config, config_dir)
        if selected(name, include, exclude)
        and category in selected_units(config, paper, output).get(dataset, ())
    }
    pending = list(wanted)
    while pending:  # add upstream runs (an upstream is needed even if the config filters it out)
        dataset, category, name = pending.pop()
        upstream = experiments[name].get("upstream")
        if upstream and (dataset, category, upstream) not in wanted:
            wanted.add((dataset, category, upstream))
            pending.append((dataset, category, upstream))
    return sorted(Run(d, c, e, seed) for d, c, e in wanted for seed in config["seeds"])
