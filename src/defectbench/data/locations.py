"""Where a configured dataset lives on disk: real data under resources/datasets, the demo's under resources/synthetic."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from defectbench import paths
from defectbench.data.images import DataError
from defectbench.data.registry import dataset_root as registry_root


def is_synthetic(dataset: str, config: Mapping[str, Any]) -> bool:
    """Whether the config synthesizes `dataset` (the demo) rather than downloading the real one."""
    return config["datasets"][dataset]["source"] == "synthetic"


def dataset_dir(dataset: str, config: Mapping[str, Any]) -> Path:
    """Where the dataset is extracted (real) or synthesized (demo): resources/{datasets,synthetic}/<dataset>."""
    return Path(paths.SYNTHETIC_DIR if is_synthetic(dataset, config) else paths.DATASETS_DIR) / dataset


def ready_root(dataset: str, ready_file: str | Path) -> Path:
    """The dataset's layout root named by its `.ready` file (written by prepare_dataset: the folder it filled)."""
    ready_file = Path(ready_file)
    try:
        folder = json.loads(ready_file.read_text())["path"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{ready_file} is unreadable ({err}); delete it and run snakemake again") from err
    return registry_root(dataset, folder)


def any_synthetic(config: Mapping[str, Any]) -> bool:
    """Whether any measured number of the configured run comes from synthetic data (tables carry a banner)."""
    return any(settings["source"] == "synthetic" for settings in config["datasets"].values())
