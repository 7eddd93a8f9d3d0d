"""Every run's metrics.json in one long table (results/metrics.csv), the input of every table and figure."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from defectbench.data.images import DataError
from defectbench.data.locations import is_synthetic
from defectbench.io import write_csv

COLUMNS = ["dataset", "category", "experiment", "seed", "metric", "value", "n_images", "device", "synthetic",
           "git_commit", "config_hash"]  # fmt: skip


def read_record(path: Path) -> dict[str, Any]:
    """One metrics.json; DataError naming the file when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise DataError(f"{path} is missing; run snakemake to produce it") from err
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is unreadable ({err}); delete it and run snakemake again") from err


def collect(metrics_files: list[Path], dest: Path, config: Mapping[str, Any]) -> Path:
    """All metrics.json in one long table: one row per (dataset, category, experiment, seed, metric).

    A record measured on another kind of data (synthetic vs real) than the config names is refused, so demo
    numbers never reach a table of the real reproduction.
    """
    rows = []
    for path in metrics_files:
        record = read_record(Path(path))
        if record["synthetic"] != is_synthetic(record["dataset"], config):
            kind = "synthetic" if record["synthetic"] else "real"
            raise DataError(
                f"{path} was measured on {kind} data but the config's source of {record['dataset']} differs; "
                f"delete it (or results/runs/{record['dataset']}) and run snakemake again"
            )
        for metric, value in record["metrics"].items():
            rows.append(
                {
                    "dataset": record["dataset"],
                    "category": record["category"],
                    "experiment": record["experiment"],
                    "seed": record["seed"],
                    "metric": metric,
                    "value": value,
                    "n_images": record["n_images"],
                    "device": record["device"],
                    "synthetic": record["synthetic"],
                    "git_commit": record["git_commit"],
                    "config_hash": record["config_hash"],
                }
            )
    frame = pd.DataFrame(rows, columns=COLUMNS).sort_values(
        ["dataset", "category", "experiment", "seed", "metric"]
    )
    return write_csv(dest, frame)
