"""One object per dataset, keyed by its registry name: how its files are recognised and parsed into a
manifest, which split protocols apply and how they are built, its evaluation units and its synthetic writer.

Adding a dataset = an entry in registry.yaml and one `Dataset` here (parser in indexers, writer in
synthetic.writers, protocol builders from splits).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from defectbench.data import indexers, splits
from defectbench.data.registry import dataset_entry, load_registry
from defectbench.data.synthetic import writers


@dataclass(frozen=True)
class Dataset:
    """Everything dataset-specific outside the registry's facts (sources, counts, categories)."""

    name: str
    parse: Callable[[Path], list[dict[str, Any]]]  # layout root -> manifest rows before probing the images
    has_layout: Callable[[Path], bool]  # whether a folder is the dataset's layout root
    protocols: Mapping[str, splits.Builder]  # split protocol name -> builder, in listing order
    write_synthetic: Callable[..., None]  # the demo generator in the real layout
    folds: tuple[str, ...] = ()  # evaluation units of a cross-validated dataset (instead of its categories)
    may_skip: frozenset[str] = field(default_factory=frozenset)  # known-broken images the indexer may skip
    parametric: Callable[[str], splits.Builder | None] | None = (
        None  # builds protocols beyond the listed ones
    )

    @property
    def entry(self) -> dict[str, Any]:
        """The dataset's registry entry (a copy)."""
        return dataset_entry(self.name)

    @property
    def units(self) -> list[str]:
        """The evaluation units a config may select: the folds of a cross-validated dataset, else categories."""
        return list(self.folds) or list(self.entry["categories"])

    def split_builder(self, protocol: str) -> splits.Builder:
        """The builder of `protocol`; ValueError listing the valid ones for another name."""
        builder = self.protocols.get(protocol) or (self.parametric(protocol) if self.parametric else None)
        if builder is None:
            raise ValueError(
                f"protocol {protocol!r} does not apply to {self.name}; valid: {', '.join(self.protocols)}"
            )
        return builder


def _has_subdir(test: Callable[[Path], bool]) -> Callable[[Path], bool]:
    return lambda folder: any(test(child) for child in indexers.subdirs(folder))


def _named(pattern: str) -> Callable[[Path], bool]:
    return _has_subdir(lambda child: re.fullmatch(pattern, child.name) is not None)


@cache
def _datasets() -> dict[str, Dataset]:
    by_name = [
        Dataset(
            "mvtec_ad",
            indexers.parse_mvtec_ad,
            _has_subdir(lambda c: (c / "train" / "good").is_dir()),
            {**splits.official_protocols(), **splits.supervised10_protocol("mvtec_ad")},
            writers.write_mvtec_ad,
        ),
        Dataset(
            "visa",
            indexers.parse_visa,
            _has_subdir(lambda c: (c / "Data" / "Images").is_dir()),
            splits.visa_protocols(),
            writers.write_visa,
        ),
        Dataset(
            "btad",
            indexers.parse_btad,
            lambda d: any((d / c / "train").is_dir() for c in ("01", "02", "03")),
            {**splits.official_protocols(), **splits.supervised10_protocol("btad")},
            writers.write_btad,
        ),
        Dataset(
            "ksdd",
            indexers.parse_ksdd,
            _named(r"kos\d+"),
            splits.ksdd_protocols(),
            writers.write_ksdd,
            folds=tuple(f"fold{k}" for k in range(splits.KSDD_FOLDS)),
            may_skip=indexers.KSDD_KNOWN_BROKEN,
        ),
        Dataset(
            "ksdd2",
            indexers.parse_ksdd2,
            lambda d: (d / "train").is_dir() and (d / "test").is_dir(),
            {
                **splits.official_protocols(),
                **splits.supervised10_protocol("ksdd2"),
                **splits.segdec_protocols("ksdd2"),
            },
            writers.write_ksdd2,
        ),
        Dataset(
            "dagm",
            indexers.parse_dagm,
            _named(r"Class\d+"),
            {**splits.official_protocols(), **splits.segdec_protocols("dagm")},
            writers.write_dagm,
        ),
        Dataset(
            "severstal",
            indexers.parse_severstal,
            lambda d: (d / "train.csv").is_file() and (d / "train_images").is_dir(),
            splits.severstal_protocols(),
            writers.write_severstal,
            parametric=splits.severstal_protocol,
        ),
        Dataset(
            "rdd2020",
            indexers.parse_rdd2020,
            lambda d: any((c / "images").is_dir() for c in indexers.subdirs(d / "train")),
            splits.rdd_protocols(),
            writers.write_rdd2020,
        ),
        Dataset(
            "rdd2022",
            indexers.parse_rdd2022,
            _has_subdir(lambda c: (c / "train" / "images").is_dir()),
            splits.rdd_protocols(),
            writers.write_rdd2022,
        ),
        Dataset(  # registry role `textures`: no split protocols, no runs (registry.yaml's dtd entry says why)
            "dtd",
            indexers.parse_dtd,
            lambda d: _has_subdir(lambda c: c.name in dataset_entry("dtd")["categories"])(d / "images"),
            {},
            writers.write_dtd,
        ),
    ]
    datasets = {d.name: d for d in by_name}
    registered = list(load_registry())
    if sorted(datasets) != sorted(registered):
        raise ValueError(
            f"registry.yaml names {registered} but defectbench.data.datasets defines {list(datasets)}"
        )
    return {name: datasets[name] for name in registered}


def dataset_names() -> list[str]:
    """Every dataset, in registry order."""
    return list(_datasets())


def get_dataset(name: str) -> Dataset:
    """The object of one dataset; ValueError listing the valid names for an unknown one."""
    datasets = _datasets()
    if name not in datasets:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(datasets)}")
    return datasets[name]
