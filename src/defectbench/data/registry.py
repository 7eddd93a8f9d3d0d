"""The dataset registry (`registry.yaml` beside this file): sources, layout root, categories, expected counts."""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any

from defectbench.io import load_yaml

REGISTRY_PATH = Path(__file__).with_name("registry.yaml")
REQUIRED_KEYS = (
    "title", "licence", "access", "archives", "max_extracted_gb", "manual_instructions", "root", "categories",
    "category_types", "counts",
)  # fmt: skip
ARCHIVE_KEYS = ("url", "filename", "size", "sha256")
ROLES = ("defects", "textures")  # optional key `role`; absent = defects
COUNT_KEYS = (
    "images", "normal", "anomalous", "train", "test",
    "train_normal", "train_anomalous", "test_normal", "test_anomalous",
)  # fmt: skip


def load_registry() -> dict[str, dict[str, Any]]:
    """Every registry entry by dataset name (a copy: callers may modify it)."""
    return copy.deepcopy(_parsed_registry())


def dataset_entry(name: str) -> dict[str, Any]:
    """One dataset's registry entry; KeyError listing the valid names for an unknown one."""
    registry = _parsed_registry()
    if name not in registry:
        raise KeyError(f"unknown dataset {name!r}; valid: {', '.join(registry)}")
    return copy.deepcopy(registry[name])


def dataset_role(name: str) -> str:
    """`defects` (a benchmark dataset) or `textures` (an image source with no splits or runs, e.g. DTD)."""
    return dataset_entry(name).get("role", "defects")


def dataset_root(name: str, extracted_dir: str | Path) -> Path:
    """The folder holding the dataset's own layout inside its extraction folder `resources/datasets/<name>`."""
    return Path(extracted_dir) / dataset_entry(name)["root"]


@lru_cache(maxsize=1)
def _parsed_registry() -> dict[str, dict[str, Any]]:
    with open(REGISTRY_PATH) as handle:
        registry = load_yaml(handle)
    _validate(registry)
    return registry


def _validate(registry: dict[str, Any]) -> None:
    """Catch editing mistakes in registry.yaml early, with the entry and key named."""
    for name, entry in registry.items():
        missing = [key for key in REQUIRED_KEYS if key not in entry]
        if missing:
            raise ValueError(f"{REGISTRY_PATH}: entry {name!r} lacks {missing}")
        if entry["access"] not in ("download", "manual"):
            raise ValueError(f"{REGISTRY_PATH}: {name}.access must be download or manual")
        if entry.get("role", "defects") not in ROLES:
            raise ValueError(f"{REGISTRY_PATH}: {name}.role must be one of {ROLES}")
        if entry["access"] == "manual" and not entry["manual_instructions"]:
            raise ValueError(f"{REGISTRY_PATH}: {name} is manual but has no manual_instructions")
        for archive in entry["archives"]:
            if sorted(archive) != sorted(ARCHIVE_KEYS):
                raise ValueError(f"{REGISTRY_PATH}: {name} archive keys must be {list(ARCHIVE_KEYS)}")
        counts = entry["counts"]
        unknown_types = set(entry["category_types"]) - set(entry["categories"])
        if unknown_types:
            raise ValueError(
                f"{REGISTRY_PATH}: {name}.category_types names unknown categories {unknown_types}"
            )
        groups = [counts.get("total", {}), *counts.get("per_category", {}).values()]
        bad = sorted({key for group in groups for key in group} - set(COUNT_KEYS))
        if bad or set(counts.get("per_category", {})) - set(entry["categories"]):
            raise ValueError(f"{REGISTRY_PATH}: {name}.counts has unknown keys or categories {bad}")
