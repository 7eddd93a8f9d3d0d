"""Which demo runs and which (method, dataset) training iterations the GPU check exercises, derived from the
experiments and the config: nothing here names a method."""

from __future__ import annotations

import pkgutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from defectbench.experiments import CONFIG_DIR, is_split_count, load_experiments, method_params
from defectbench.plan import Run, planned_runs, selected


@dataclass(frozen=True)
class SmokeRun:
    """A demo run chosen for the code paths (`covers`) no cheaper or earlier run covered."""

    run: Run
    method: str
    covers: tuple[str, ...]


@dataclass(frozen=True)
class MemoryCase:
    """One training iteration to measure: a method on a dataset with an experiment's overrides, or why not."""

    method: str
    dataset: str
    experiment: str | None
    variant: tuple[tuple[str, str], ...] = ()
    reason: str | None = None  # set when the case cannot be measured standalone


def _switches(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """An experiment's string and boolean overrides: the ones that pick code paths (architecture, CAM, flags)."""
    return sorted((k, str(v)) for k, v in (spec.get("params") or {}).items() if isinstance(v, str | bool))


def features(spec: Mapping[str, Any]) -> frozenset[str]:
    """The code paths an experiment switches on: method, supervision, upstream use and each switch's value."""
    method = spec["method"]
    found = {
        method,
        f"{method}: supervision={spec.get('supervision')}",
        f"{method}: upstream={bool(spec.get('upstream'))}",
    }
    found.update(f"{method}: {key}={value}" for key, value in _switches(spec))
    return frozenset(found)


def run_cost(run: Run, config: Mapping[str, Any]) -> int:
    """Pixels of the run's evaluation maps: the proxy of a demo run's cost (the demo datasets are alike in size)."""
    height, width = config["datasets"][run.dataset]["eval_size"]
    return int(height) * int(width)


def smoke_runs(
    config: Mapping[str, Any], config_dir: Path = CONFIG_DIR, patterns: Iterable[str] = ("*",)
) -> list[SmokeRun]:
    """Greedy cover of every feature of the demo's planned runs (first seed, experiments matching `patterns`):
    each pick covers the most features not yet covered, the cheapest run first among equals."""
    experiments = load_experiments(config_dir)
    seed = config["seeds"][0]
    patterns = list(patterns)
    candidates = [  # split-count experiments train nothing: no GPU path to check
        r
        for r in planned_runs(config, config_dir)
        if r.seed == seed
        and selected(r.experiment, patterns, ())
        and not is_split_count(experiments[r.experiment])
    ]
    found = {run: features(experiments[run.experiment]) for run in candidates}
    uncovered = set().union(*found.values()) if found else set()
    chosen = []
    while uncovered:
        best = min(candidates, key=lambda run: (-len(found[run] & uncovered), run_cost(run, config), run))
        gained = found[best] & uncovered
        chosen.append(SmokeRun(best, experiments[best.experiment]["method"], tuple(sorted(gained))))
        uncovered -= gained
    return chosen


def memory_cases(
    config: Mapping[str, Any], config_dir: Path = CONFIG_DIR, methods: Iterable[str] | None = None
) -> list[MemoryCase]:
    """One case per (method, dataset, string switches such as the architecture) of the experiments on configured
    datasets, from the experiment with the fewest overrides (boolean switches barely change memory); where every
    experiment of a (method, dataset) trains on an upstream run's output, one case saying so."""
    experiments = load_experiments(config_dir)
    wanted = set(methods) if methods is not None else None
    standalone: dict[tuple[str, str, tuple[tuple[str, str], ...]], str] = {}
    dependent: dict[tuple[str, str], str] = {}
    for name, spec in sorted(
        experiments.items(), key=lambda item: (len(item[1].get("params") or {}), item[0])
    ):
        if is_split_count(spec):
            continue
        method = spec["method"]
        if wanted is not None and method not in wanted:
            continue
        for dataset in spec["datasets"]:
            if dataset not in config["datasets"]:
                continue
            if spec.get("upstream"):
                dependent.setdefault((method, dataset), name)
            else:
                strings = tuple((k, v) for k, v in (spec.get("params") or {}).items() if isinstance(v, str))
                standalone.setdefault((method, dataset, tuple(sorted(strings))), name)
    cases = []
    for (method, dataset, variant), name in sorted(standalone.items()):
        feature_set = method_params(method, dataset, "demo", experiments[name].get("params"), config_dir).get(
            "feature_set"
        )
        reason = None
        if feature_set:  # the residual methods: measuring them here would need the residual stage's job too
            reason = (f"{method} trains on the shared residual file (feature set {feature_set}), which one "
                      "standalone iteration does not compute; `make bench` times it on the device")  # fmt: skip
        cases.append(MemoryCase(method, dataset, name, variant, reason=reason))
    measured = {(case.method, case.dataset) for case in cases}
    for (method, dataset), name in sorted(dependent.items()):
        if (method, dataset) not in measured:
            upstream = experiments[name]["upstream"]
            reason = (f"every {method} experiment on {dataset} trains on the output of an upstream run "
                      f"(e.g. {name} needs {upstream}), which one standalone iteration cannot provide")  # fmt: skip
            cases.append(MemoryCase(method, dataset, None, reason=reason))
    return cases


def registered_methods() -> list[str]:
    """Every method package under defectbench.methods (each registers the method of its name)."""
    import defectbench.methods as package

    return sorted(module.name for module in pkgutil.iter_modules(package.__path__) if module.ispkg)
