"""Validation of the workflow config with messages that name the offending key."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path("workflow/schemas/config.schema.yaml")
FOLD_UNITS = {
    "ksdd": ["fold0", "fold1", "fold2"]
}  # cross-validated datasets: units are folds, not categories


class ConfigError(ValueError):
    """The workflow config is invalid; the message names the key and what is expected."""


def validate_config(config: Mapping[str, Any], schema_path: Path = SCHEMA_PATH) -> None:
    schema = yaml.safe_load(Path(schema_path).read_text())
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(config),
        key=lambda e: list(map(str, e.absolute_path)),
    )
    if errors:
        lines = [f"  {'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}" for e in errors]
        raise ConfigError(f"invalid config (schema {schema_path}):\n" + "\n".join(lines))
    from defectbench.data.registry import dataset_entry

    for name, settings in config["datasets"].items():
        valid = FOLD_UNITS.get(name) or dataset_entry(name)["categories"]
        unknown = [c for c in settings["categories"] if c not in valid]
        if unknown:
            raise ConfigError(
                f"invalid config: datasets.{name}.categories: unknown {unknown}; valid: {valid}"
            )
