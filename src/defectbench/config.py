"""Validation of the workflow config with messages that name the offending key."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path("workflow/schemas/config.schema.yaml")


class ConfigError(ValueError):
    """The workflow config is invalid; the message names the key and what is expected."""


def validate_config(config: Mapping[str, Any], schema_path: Path = SCHEMA_PATH) -> None:
    schema = yaml.safe_load(Path(schema_path).read_text())
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
    for name, settings in config["datasets"].items():
        valid = get_dataset(name).units
        unknown = [c for c in settings["categories"] if c not in valid]
        if unknown:
            raise ConfigError(
                f"invalid config: datasets.{name}.categories: unknown {unknown}; valid: {valid}"
            )
