"""Validation of the workflow config with messages that name the offending key."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from defectbench.io import load_yaml

SCHEMA_PATH = Path("workflow/schemas/config.schema.yaml")


class ConfigError(ValueError):
    """The workflow config is invalid; the message names the key and what is expected."""


def yaml_error_message(path: str | Path, err: yaml.YAMLError) -> str:
    """`<file>, line L, column C: <problem>` for a YAML syntax error (the parser's own text names neither)."""
    mark = getattr(err, "problem_mark", None)
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
    problem = " ".join(filter(None, [getattr(err, "context", None), getattr(err, "problem", None)]))
    return f"{where}: invalid YAML: {problem or err}"


def check_yaml_syntax(path: str | Path) -> None:
    """Fail with the file and line of a YAML syntax error before Snakemake loads the file without naming them."""
    try:
        load_yaml(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ConfigError(yaml_error_message(path, err)) from None


def validate_config(config: Mapping[str, Any], schema_path: Path = SCHEMA_PATH) -> None:
    schema = load_yaml(Path(schema_path).read_text())
    from defectbench.data.datasets import dataset_names, get_dataset

    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(config),
        key=lambda e: list(map(str, e.absolute_path)),
    )
    lines = [f"  {'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}" for e in errors]
    known = dataset_names()
    lines += [
        f"  datasets: {name!r} is not a known dataset; valid: {', '.join(known)}"
        for name in (config.get("datasets") or {})
        if isinstance(config.get("datasets"), Mapping) and name not in known
    ]
    if lines:
        raise ConfigError(f"invalid config (schema {schema_path}):\n" + "\n".join(lines))
    from defectbench.data.registry import dataset_role

    for name, settings in config["datasets"].items():
        if dataset_role(name) == "defects" and "eval_size" not in settings:
            raise ConfigError(f"invalid config: datasets.{name}: 'eval_size' is a required property")
        valid = get_dataset(name).units
        unknown = [c for c in settings["categories"] if c not in valid]
        if unknown:
            raise ConfigError(
                f"invalid config: datasets.{name}.categories: unknown {unknown}; valid: {valid}"
            )
