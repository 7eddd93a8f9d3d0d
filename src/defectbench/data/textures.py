"""The images of a texture dataset (registry role `textures`, e.g. DTD) that synthetic anomalies draw from."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from defectbench.data.images import DataError
from defectbench.data.locations import ready_root
from defectbench.data.samples import MANIFEST_COLUMNS, read_table


def texture_files(dataset: str, ready_file: Path, manifest: Path, categories: Sequence[str]) -> list[Path]:
    """Every image of the configured texture classes, from the prepared dataset's manifest (the indexer's count
    check has passed for real data); DataError naming the folder and the fix when it is missing or empty."""
    root = ready_root(dataset, ready_file)
    redo = (
        f"prepare it again (delete {ready_file} and run `snakemake {ready_file}`), "
        "or set texture_source: procedural in config/anomalies.yaml (the generator's shared settings)"
    )
    if not root.is_dir():
        raise DataError(f"the {dataset} texture folder {root} (named by {ready_file}) does not exist: {redo}")
    rows = read_table(manifest, MANIFEST_COLUMNS)
    files = [root / rel for rel in rows.loc[rows["category"].isin(list(categories)), "image"]]
    if not files:
        raise DataError(
            f"no {dataset} texture images of the classes {list(categories)} under {root} (manifest {manifest}): "
            f"check datasets.{dataset}.categories, or {redo}"
        )
    missing = [path for path in files if not path.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} {dataset} texture images listed in {manifest} are missing, e.g. {missing[0]}: {redo}"
        )
    return files
