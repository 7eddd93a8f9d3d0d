"""Experiments (config/experiments/*.yaml, checked against their JSON schema) and their resolved hyper-parameters."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from defectbench.config import yaml_error_message
from defectbench.io import load_yaml

CONFIG_DIR = Path("config")
SCHEMA_PATH = Path("workflow/schemas/experiments.schema.yaml")
ANOMALY_SCHEMA_PATH = Path("workflow/schemas/anomalies.schema.yaml")
ANOMALY_KEY = "anomaly"  # a method's synthetic-anomaly block: `{generator: <name of config/anomalies.yaml>}`
DEFAULTS_KEY = "defaults"  # a file's block merged into each of its experiments (the experiment's keys win)


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
        content = load_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(yaml_error_message(path, err)) from None
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
        content = read_yaml(path)
        defaults = content.pop(DEFAULTS_KEY, None) or {}
        if not isinstance(defaults, Mapping):
            raise ValueError(f"{path}: `{DEFAULTS_KEY}:` must be a mapping of experiment settings")
        merged = {
            name: {**defaults, **spec} if isinstance(spec, Mapping) else spec
            for name, spec in content.items()
        }
        _check_schema(path, merged)
        for name, spec in merged.items():
            if name in experiments:
                raise ValueError(f"experiment {name!r} is defined in both {origin[name]} and {path}")
            experiments[name] = spec
            origin[name] = path
    for name, spec in experiments.items():
        upstream = spec.get("upstream")
        if upstream is not None and upstream not in experiments:
            raise ValueError(f"experiment {name!r} names an unknown upstream experiment {upstream!r}")
    return experiments


def is_split_count(experiment: Mapping[str, Any]) -> bool:
    """An experiment of `kind: split_counts` counts images per label of its split (no method, no model)."""
    return experiment.get("kind") == "split_counts"


def method_params(
    method: str,
    dataset: str,
    scale: str,
    overrides: Mapping[str, Any] | None = None,
    config_dir: Path = CONFIG_DIR,
) -> dict[str, Any]:
    """Resolved hyper-parameters: paper ← demo (scale demo) ← datasets[<dataset>] ← experiment overrides; the
    synthetic-anomaly block (`anomaly: {generator: ...}`) resolved from config/anomalies.yaml."""
    path = config_dir / "methods" / f"{method}.yaml"
    if not path.exists():
        raise ValueError(f"no hyper-parameter file {path} for method {method!r}")
    params = deep_merge(_scaled(read_yaml(path), path, dataset, scale), overrides or {})
    if ANOMALY_KEY in params:
        where = f"{path}: {ANOMALY_KEY}"
        if ANOMALY_KEY in (overrides or {}):  # a wrong key may be the experiment's, not the method file's
            where += f" with the experiment's params.{ANOMALY_KEY} {overrides[ANOMALY_KEY]!r}"
        params[ANOMALY_KEY] = anomaly_settings(params[ANOMALY_KEY], dataset, scale, where, config_dir)
    return params


def _scaled(spec: Mapping[str, Any], path: Path, dataset: str, scale: str) -> dict[str, Any]:
    """`paper:` ← `demo:` (scale demo) ← their `datasets:` entry of `dataset`."""
    if "paper" not in spec:
        raise ValueError(f"{path} lacks the `paper:` block")
    params = dict(spec["paper"])
    if scale == "demo":
        params = deep_merge(params, spec.get("demo") or {})
    per_dataset = params.pop("datasets", None) or {}
    return deep_merge(params, per_dataset.get(dataset, {}))


def anomaly_settings(
    block: Any, dataset: str, scale: str, where: str, config_dir: Path = CONFIG_DIR
) -> dict[str, Any]:
    """A method's synthetic-anomaly settings: the generator it names in config/anomalies.yaml (the one source of
    truth, checked against its schema), updated with the method's own keys (a paper-cited override of a generator
    setting); the result checked against the schema's `resolved` definition."""
    path = config_dir / "anomalies.yaml"
    schema = load_yaml(ANOMALY_SCHEMA_PATH.read_text())
    generators = read_yaml(path)
    _raise_errors(
        jsonschema.Draft202012Validator(schema).iter_errors(generators),
        f"{path} does not match {ANOMALY_SCHEMA_PATH.name}",
    )
    if not isinstance(block, Mapping) or block.get("generator") not in generators:
        raise ValueError(
            f"{where} must name its synthetic-anomaly generator of {path} ({{generator: <name>}}; known: "
            f"{', '.join(generators)}), not {block!r}; copy no setting of it into the method's config"
        )
    own = {k: v for k, v in block.items() if k != "generator"}
    settings = deep_merge(_scaled(generators[block["generator"]], path, dataset, scale), own)
    resolved = {"$ref": "#/$defs/resolved", "$defs": schema["$defs"]}
    _raise_errors(
        jsonschema.Draft202012Validator(resolved).iter_errors(settings), f"{where} (resolved with {path})"
    )
    return settings


def _raise_errors(errors: Iterator[jsonschema.ValidationError], what: str) -> None:
    """One ValueError listing every schema error by its key path, or nothing."""
    ordered = sorted(errors, key=lambda e: list(map(str, e.absolute_path)))
    lines = [f"  {'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}" for e in ordered]
    if lines:
        raise ValueError(f"{what}:\n" + "\n".join(lines))


@cache
def _schema() -> dict[str, Any]:
    return load_yaml(SCHEMA_PATH.read_text())


def pretrain_units(
    params: Mapping[str, Any], dataset: str, category: str, config: Mapping[str, Any]
) -> list[tuple[str, str]]:
    """The (dataset, category) units whose labelled defects a method pre-trains on before its own unit: params
    `pretrain_on: {dataset: <name> | null = the run's own}`, every configured category of it but the run's own
    (ADClick's leave-one-category-out training)."""
    spec = params.get("pretrain_on")
    if not spec:
        return []
    source = spec.get("dataset") or dataset
    if source not in config["datasets"]:
        raise ValueError(f"pretrain_on names dataset {source!r}, which the config does not configure")
    return [
        (source, c) for c in config["datasets"][source]["categories"] if (source, c) != (dataset, category)
    ]


def texture_dataset(params: Mapping[str, Any], config: Mapping[str, Any]) -> str | None:
    """The texture dataset (registry role `textures`, e.g. DTD) a method's synthetic anomalies draw from: params
    `anomaly.texture_source`, `procedural` (or no anomaly block) = none; it must be configured under `datasets:`."""
    from defectbench.data.registry import dataset_role, load_registry

    source = (params.get("anomaly") or {}).get("texture_source")
    if source in (None, "procedural"):
        return None
    valid = ["procedural", *(n for n in load_registry() if dataset_role(n) == "textures")]
    if source not in valid:
        raise ValueError(
            f"anomaly.texture_source {source!r} is not a texture source; valid: {', '.join(valid)}"
        )
    if source not in config["datasets"]:
        raise ValueError(
            f"anomaly.texture_source names dataset {source!r}, which the config does not configure: add "
            f"datasets.{source} (source: download, or synthetic for a demo) or set texture_source: procedural "
            f"in {CONFIG_DIR / 'anomalies.yaml'}"
        )
    return source


def _check_schema(path: Path, experiments: Mapping[str, Any]) -> None:
    """Every experiment of one file (defaults merged) against experiments.schema.yaml, all errors at once."""
    errors = sorted(
        jsonschema.Draft202012Validator(_schema()).iter_errors(dict(experiments)),
        key=lambda e: list(map(str, e.absolute_path)),
    )
    from defectbench.data.datasets import dataset_names
    from defectbench.data.registry import dataset_role

    lines = [f"  {'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}" for e in errors]
    # a texture dataset (DTD) has no splits, hence no runs
    known = [name for name in dataset_names() if dataset_role(name) == "defects"]
    for name, spec in experiments.items():
        for k, dataset in enumerate(spec.get("datasets") or [] if isinstance(spec, Mapping) else []):
            if dataset not in known:
                lines.append(
                    f"  {name}.datasets.{k}: {dataset!r} is not a defect dataset; valid: {', '.join(known)}"
                )
    if lines:
        raise ValueError(f"{path} does not match {SCHEMA_PATH.name}:\n" + "\n".join(lines))


# Keys that select where an experiment or dataset runs, not how a given run is computed: adding a dataset or
# category to an experiment or a dataset, or a mirror URL (the checksum still applies), changes no existing result.
_PLACEMENT_KEYS = {"experiment": ("datasets", "categories"), "dataset": ("categories", "urls")}


def run_settings(
    dataset: str,
    experiment: str,
    config: Mapping[str, Any],
    experiments: Mapping[str, Any] | None = None,
    config_dir: Path = CONFIG_DIR,
) -> dict[str, Any]:
    """Every setting the results of a run of `experiment` on `dataset` depend on, resolved: the experiment entry,
    the method's hyper-parameters (paper ← demo ← dataset ← experiment), the dataset's settings (the same for
    every category and seed) and those of its synthetic anomalies' texture dataset, if any. The rules pass it
    as a Snakemake param, so an edit re-runs exactly the runs it changes, and its hash is metrics.json's `config_hash`."""
    entry = (experiments if experiments is not None else load_experiments(config_dir))[experiment]
    params = method_params(entry["method"], dataset, config["scale"], entry.get("params"), config_dir)
    settings = {
        "experiment": {k: v for k, v in entry.items() if k not in _PLACEMENT_KEYS["experiment"]},
        "params": params,
        "dataset": {
            k: v for k, v in config["datasets"][dataset].items() if k not in _PLACEMENT_KEYS["dataset"]
        },
    }
    textures = texture_dataset(params, config)
    if textures:  # its configured classes select the texture images the run draws from
        settings["textures"] = {k: v for k, v in config["datasets"][textures].items() if k != "urls"}
    return settings


def settings_key(settings: Mapping[str, Any]) -> str:
    """The canonical text of resolved settings (sorted keys): Snakemake compares params by their text."""
    return json.dumps(settings, sort_keys=True, default=str)
