"""Experiments, hyper-parameters and the runs the configured papers need: the single source of the rule graph."""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from defectbench import paths

CONFIG_DIR = Path("config")


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


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`base` updated recursively with `override` (neither is modified)."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from err
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ValueError(f"{path} must hold a mapping at the top level, not {type(content).__name__}")
    return content


def load_experiments(config_dir: Path = CONFIG_DIR) -> dict[str, dict[str, Any]]:
    """Every experiment of config/experiments/*.yaml; a name defined twice is an error."""
    experiments: dict[str, dict[str, Any]] = {}
    origin: dict[str, Path] = {}
    for path in sorted((config_dir / "experiments").glob("*.yaml")):
        for name, spec in read_yaml(path).items():
            if name in experiments:
                raise ValueError(f"experiment {name!r} is defined in both {origin[name]} and {path}")
            for key in ("method", "protocol", "datasets"):
                if key not in spec:
                    raise ValueError(f"{path}: experiment {name!r} lacks the key {key!r}")
            experiments[name] = spec
            origin[name] = path
    for name, spec in experiments.items():
        upstream = spec.get("upstream")
        if upstream is not None and upstream not in experiments:
            raise ValueError(f"experiment {name!r} names an unknown upstream experiment {upstream!r}")
    return experiments


def method_params(
    method: str,
    dataset: str,
    scale: str,
    overrides: Mapping[str, Any] | None = None,
    config_dir: Path = CONFIG_DIR,
) -> dict[str, Any]:
    """Resolved hyper-parameters: paper ← demo (scale demo) ← datasets[<dataset>] ← experiment overrides."""
    path = config_dir / "methods" / f"{method}.yaml"
    if not path.exists():
        raise ValueError(f"no hyper-parameter file {path} for method {method!r}")
    spec = read_yaml(path)
    if "paper" not in spec:
        raise ValueError(f"{path} lacks the `paper:` block")
    params = spec["paper"]
    if scale == "demo":
        params = deep_merge(params, spec.get("demo") or {})
    per_dataset = params.pop("datasets", None) or {}
    params = deep_merge(params, per_dataset.get(dataset, {}))
    return deep_merge(params, overrides or {})


def config_hash(*parts: Any) -> str:
    """Stable short hash of JSON-serialisable parts (recorded in metrics.json)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _selected(name: str, include: Iterable[str], exclude: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in include) and not any(
        fnmatch.fnmatchcase(name, pattern) for pattern in exclude
    )


def planned_runs(config: Mapping[str, Any], config_dir: Path = CONFIG_DIR) -> list[Run]:
    """The runs the configured papers' tables and figures need, restricted to the configured datasets,
    categories, experiments and seeds, plus the upstream runs they depend on."""
    from defectbench.tables.spec import required_cells

    experiments = load_experiments(config_dir)
    include = config.get("experiments", ["*"])
    exclude = config.get("exclude_experiments", [])
    datasets = config["datasets"]
    wanted: set[tuple[str, str, str]] = set()
    for paper in config["papers"]:
        for cell in required_cells(config_dir / "tables" / f"{paper}.yaml"):
            name, dataset, category = cell["experiment"], cell["dataset"], cell["category"]
            if name not in experiments:
                raise ValueError(f"config/tables/{paper}.yaml names an unknown experiment {name!r}")
            if _selected(name, include, exclude) and category in datasets.get(dataset, {}).get(
                "categories", ()
            ):
                wanted.add((dataset, category, name))
    pending = list(wanted)
    while pending:  # add upstream runs (an upstream is needed even if the config filters it out)
        dataset, category, name = pending.pop()
        upstream = experiments[name].get("upstream")
        if upstream and (dataset, category, upstream) not in wanted:
            wanted.add((dataset, category, upstream))
            pending.append((dataset, category, upstream))
    return sorted(Run(d, c, e, seed) for d, c, e in wanted for seed in config["seeds"])
