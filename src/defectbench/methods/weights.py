"""Pretrained weights: the registry (`weights.yaml` beside this file), where each model lives under
resources/weights/, which files a run needs, and their verified download by the `weights` rule.

Downloads go through `defectbench.data.download.fetch` (resumable, size/sha256-verified, trust on first use where
no checksum is published), exactly as dataset archives do; jobs only read the local files.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from defectbench import paths
from defectbench.data.images import DataError
from defectbench.io import load_yaml

REGISTRY_PATH = Path(__file__).with_name("weights.yaml")
WEIGHTS_DIR_ENV = "DEFECTBENCH_WEIGHTS_DIR"
ENTRY_KEYS = ("title", "source", "access", "manual_instructions", "layout", "files")
FILE_KEYS = ("url", "filename", "size", "sha256", "sha256_prefix")


def load_weights_registry() -> dict[str, dict[str, Any]]:
    """Every registry entry by name (a copy: callers may modify it)."""
    return copy.deepcopy(_parsed_registry())


def weights_entry(name: str) -> dict[str, Any]:
    registry = _parsed_registry()
    if name not in registry:
        raise DataError(
            f"no pretrained weights named {name!r} in {REGISTRY_PATH}; known: {', '.join(registry)}. "
            "Add an entry (URL, size, sha256) there, or set pretrained: false"
        )
    return copy.deepcopy(registry[name])


def weights_root(weights_dir: Path | None = None) -> Path:
    """resources/weights, or $DEFECTBENCH_WEIGHTS_DIR (tests; a shared cache on a cluster)."""
    return Path(weights_dir or os.environ.get(WEIGHTS_DIR_ENV) or paths.WEIGHTS_DIR)


def weights_path(name: str, weights_dir: Path | None = None) -> Path:
    """The local weights of `name`: the state-dict file (layout file) or the model's folder (layout directory)."""
    entry = weights_entry(name)
    root = weights_root(weights_dir)
    return root / name if entry["layout"] == "directory" else root / entry["files"][0]["filename"]


def weights_files(name: str) -> list[str]:
    """The files of `name` relative to the weights folder: the `weights` rule's outputs, a job's inputs."""
    entry = weights_entry(name)
    prefix = f"{name}/" if entry["layout"] == "directory" else ""
    return [prefix + item["filename"] for item in entry["files"]]


def required_weights(params: Mapping[str, Any]) -> list[str]:
    """The registry names a run loads: with `pretrained: true`, every string among its resolved parameters that
    names a registry entry (`backbone: wide_resnet50_2`, `encoder: resnet50`, `weights: sam_vit_base` ...)."""
    if not params.get("pretrained"):
        return []
    registry = _parsed_registry()
    return sorted({value for value in _strings(params) if value in registry})


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _file_of(relative: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(name, entry, file record) of a path relative to the weights folder."""
    for name, entry in _parsed_registry().items():
        for item, candidate in zip(entry["files"], weights_files(name), strict=True):
            if candidate == relative:
                return name, entry, item
    raise DataError(f"resources/weights/{relative} is not a file of any entry of {REGISTRY_PATH}")


def fetch_weights_file(relative: str, dest: Path) -> Path:
    """Download one registry file to `dest` and verify it (size, sha256 or the recorded first download, and the
    sha256 prefix the publisher put into the file name); a manual entry must already be placed there."""
    from defectbench.data.download import fetch, record_first_use, verify_file

    name, entry, item = _file_of(relative)
    dest = Path(dest)
    if entry["access"] == "manual" and not dest.exists():
        raise DataError(
            f"the weights {name!r} cannot be downloaded automatically: place {item['filename']} at {dest}.\n"
            f"How to get them: {entry['manual_instructions']}"
        )
    if dest.exists():
        sha256 = verify_file(dest, item["sha256"], item["size"])
    else:
        fetch(item["url"], dest, sha256=item["sha256"], size=item["size"])
        sha256 = verify_file(dest, item["sha256"], item["size"])
    prefix = item["sha256_prefix"]
    if prefix and not sha256.startswith(prefix):
        aside = dest.with_name(dest.name + ".sha256-mismatch")
        os.replace(dest, aside)
        raise DataError(
            f"{dest} failed verification: sha256 {sha256} does not start with {prefix}, the prefix its publisher "
            f"put into the file name ({item['url']}). The bad file was moved to {aside}; download it again"
        )
    if item["sha256"] is None:  # weights are not extracted: recorded once every check we have passed
        record_first_use(dest, dest.stat().st_size, sha256, dest.stat().st_mtime_ns)
    return dest


def verify_weights(name: str, weights_dir: Path | None = None) -> Path:
    """The local weights of `name`, every file verified (a cheap look-up once recorded); what loaders call."""
    root = weights_root(weights_dir)
    for relative in weights_files(name):
        path = root / relative
        if not path.exists():
            raise DataError(
                f"pretrained weights {name!r} not found at {path}: run `snakemake {path}` where the internet is "
                "reachable (or place the file there), or set pretrained: false"
            )
        fetch_weights_file(relative, path)
    return weights_path(name, weights_dir)


@lru_cache(maxsize=1)
def _parsed_registry() -> dict[str, dict[str, Any]]:
    registry = load_yaml(REGISTRY_PATH.read_text())
    for name, entry in registry.items():
        if sorted(entry) != sorted(ENTRY_KEYS):
            raise ValueError(f"{REGISTRY_PATH}: entry {name!r} must have exactly the keys {list(ENTRY_KEYS)}")
        if entry["access"] not in ("download", "manual") or entry["layout"] not in ("file", "directory"):
            raise ValueError(f"{REGISTRY_PATH}: {name}: access download|manual, layout file|directory")
        if entry["layout"] == "file" and len(entry["files"]) != 1:
            raise ValueError(f"{REGISTRY_PATH}: {name} has layout file but {len(entry['files'])} files")
        for item in entry["files"]:
            if sorted(item) != sorted(FILE_KEYS):
                raise ValueError(f"{REGISTRY_PATH}: {name}: file keys must be {list(FILE_KEYS)}")
            if entry["access"] == "download" and not item["url"]:
                raise ValueError(
                    f"{REGISTRY_PATH}: {name}: a download entry needs a url for {item['filename']}"
                )
        if entry["access"] == "manual" and not entry["manual_instructions"]:
            raise ValueError(f"{REGISTRY_PATH}: {name} is manual but has no manual_instructions")
    return registry
