"""Shared fixtures: synthetic datasets in their real formats, indexed and split, as the workflow would."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from defectbench.data.indexers import index_dataset
from defectbench.data.samples import Sample, load_samples
from defectbench.data.splits import make_split
from defectbench.data.synthetic import synthesize
from defectbench.io import write_csv

SampleFactory = Callable[..., dict[str, list[Sample]]]


@pytest.fixture
def synthetic_samples(tmp_path: Path) -> SampleFactory:
    """`synthetic_samples(dataset, protocol, category, **generator_options)` → samples by subset."""

    def make(
        dataset: str, protocol: str, category: str, seed: int = 0, **options: object
    ) -> dict[str, list[Sample]]:
        root = synthesize(dataset, tmp_path / dataset, seed=seed, **options)
        manifest = index_dataset(dataset, root, check_counts=False)
        split = make_split(dataset, protocol, manifest, synthetic=True, seed=seed)
        manifest_csv = write_csv(tmp_path / f"{dataset}.manifest.csv", manifest)
        split_csv = write_csv(tmp_path / f"{dataset}.{protocol}.csv", split)
        return load_samples(manifest_csv, split_csv, root, category)

    return make


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Small test networks run several times faster on one thread than on two busy cores; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
