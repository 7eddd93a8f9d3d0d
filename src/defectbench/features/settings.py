"""Named feature sets of `config/features.yaml`, resolved for one (dataset, category) at one scale."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from defectbench.experiments import CONFIG_DIR, deep_merge, read_yaml

FEATURES_FILE = "features.yaml"
REQUIRED_KEYS = (
    "protocol", "backbone", "pretrained", "layers", "patch_size", "layer_dims", "embed_dims", "stride",
    "input_size", "positional", "positional_weight", "coreset_fraction", "coreset_projection_dims",
    "coreset_start_points", "max_bank_patches", "max_train_images", "pca_variance", "location_radius",
    "retrieval", "batch_size", "seed",
)  # fmt: skip
RETRIEVAL_KEYS = ("layer", "downsample", "pca_dims", "window", "keep_fraction", "k")


def feature_set_names(config_dir: Path = CONFIG_DIR) -> list[str]:
    return sorted(read_yaml(config_dir / FEATURES_FILE).get("feature_sets", {}))


def _block(
    name: str, sets: Mapping[str, Any], path: Path, scale: str, seen: tuple[str, ...]
) -> dict[str, Any]:
    """paper ← demo of one feature set, on top of its `base:` set (resolved recursively)."""
    if name not in sets:
        raise ValueError(f"{path} defines no feature set {name!r}; defined: {sorted(sets)}")
    if name in seen:
        raise ValueError(f"{path}: feature set {name!r} is its own base ({' → '.join((*seen, name))})")
    spec = sets[name]
    base = _block(spec["base"], sets, path, scale, (*seen, name)) if spec.get("base") else {}
    settings = deep_merge(base, spec.get("paper") or {})
    if scale == "demo":
        settings = deep_merge(settings, spec.get("demo") or {})
    return settings


def feature_settings(
    name: str, dataset: str, category: str, scale: str, config_dir: Path = CONFIG_DIR
) -> dict[str, Any]:
    """The resolved settings of feature set `name` for one unit; exactly what its residual file records.

    paper ← demo (scale demo) ← datasets[<dataset>]; `positional_weight` becomes the number for the unit's
    category type (texture / object, from the registry or the file's `category_types`).
    """
    from defectbench.data.registry import dataset_entry

    path = config_dir / FEATURES_FILE
    spec = read_yaml(path)
    settings = _block(name, spec.get("feature_sets") or {}, path, scale, ())
    per_dataset = settings.pop("datasets", None) or {}
    settings = deep_merge(settings, per_dataset.get(dataset, {}))
    missing = [key for key in REQUIRED_KEYS if key not in settings]
    missing += [f"retrieval.{key}" for key in RETRIEVAL_KEYS if key not in settings.get("retrieval", {})]
    if missing:
        raise ValueError(f"{path}: feature set {name!r} lacks the settings {missing}")
    types = {
        **(spec.get("category_types") or {}).get(dataset, {}),
        **dataset_entry(dataset).get("category_types", {}),
    }
    category_type = types.get(category, (spec.get("category_types") or {}).get("default", "texture"))
    weights = settings["positional_weight"]
    settings["category_type"] = category_type
    settings["positional_weight"] = float(weights[category_type] if isinstance(weights, Mapping) else weights)
    if not settings["positional"]:
        settings["positional_weight"] = 0.0
    settings.update(feature_set=name, dataset=dataset, category=category, scale=scale)
    return settings
