"""Synthetic datasets in each real dataset's exact on-disk layout, for the built-in demo and for tests.

`synthesize(dataset, dest)` writes into `dest` what extracting the real archive into `dest` would give (so
`dest` plays the role of `resources/datasets/<dataset>/`) and returns the dataset root inside it (the registry's
`root`), which is what `defectbench.data.indexers.index_dataset` reads.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from defectbench.data.registry import dataset_entry
from defectbench.io import write_json

MARKER_NAME = ".synthetic.json"  # written into dest; marks a folder synthesize may replace
PACKAGE_DIR = Path(__file__).parent


def writer_code_version(package_dir: Path = PACKAGE_DIR) -> str:
    """Digest of the writers' source (this package's modules): a parameter of the workflow's prepare step, so that
    a change to how synthetic data are drawn re-synthesizes them and re-runs what was trained on them."""
    digest = hashlib.sha256()
    for module in sorted(package_dir.glob("*.py")):
        digest.update(module.name.encode() + b"\0" + module.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def generator_options(dataset: str) -> dict[str, Any]:
    """The size options of one dataset's generator with their (demo) defaults."""
    parameters = inspect.signature(_generator(dataset)).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def synthesize(dataset: str, dest: str | Path, seed: int = 0, **sizes: Any) -> Path:
    """Write a synthetic `dataset` into `dest` (replacing an earlier synthetic one); return its dataset root.

    `sizes` are the generator's options (see `generator_options`), e.g. `categories`, `image_size`, counts.
    The folder is built beside `dest` and renamed into place, so `dest` is never half-written.
    """
    writer = _generator(dataset)
    unknown = sorted(set(sizes) - set(generator_options(dataset)))
    if unknown:
        raise ValueError(
            f"unknown options {unknown} for {dataset}; valid: {sorted(generator_options(dataset))}"
        )
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()) and not (dest / MARKER_NAME).exists():
        raise ValueError(
            f"{dest} holds data that synthesize did not write; refusing to replace it: choose an empty folder"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    build.chmod(0o755)
    root_name = dataset_entry(dataset)["root"]
    try:
        writer(build / root_name, seed, **sizes)
        write_json(
            build / MARKER_NAME,
            {
                "dataset": dataset,
                "seed": seed,
                "options": {**generator_options(dataset), **sizes},
                "writer_code_version": writer_code_version(),
            },
        )
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(build, dest)
    finally:
        if build.exists():
            shutil.rmtree(build)
    return dest / root_name


def _generator(dataset: str) -> Callable[..., None]:
    from defectbench.data.datasets import get_dataset

    return get_dataset(dataset).write_synthetic
