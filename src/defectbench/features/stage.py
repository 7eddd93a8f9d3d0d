"""The `residual_features` workflow stage: residuals of every image of one split unit, computed once and stored
for every consumer (WeakREST's variants, ADClick, RFL+RIS)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from defectbench.data.images import DataError
from defectbench.data.samples import Sample
from defectbench.features.residual import ResidualModel
from defectbench.features.settings import FEATURES_FILE
from defectbench.features.store import ResidualFile, write_residual_file


def reference_samples(
    subsets: Mapping[str, list[Sample]], split: str | os.PathLike, seed: int, limit: int
) -> list[Sample]:
    """The normal training images the bank is built from (a seeded random `limit` of them if there are more)."""
    normal = [s for s in subsets.get("train", []) if s.label == 0]
    if not normal:
        raise DataError(
            f"{split} has no normal training images for this category: the residual stage needs defect-free "
            "reference images; check the split protocol named by the feature set in config/features.yaml"
        )
    if len(normal) > limit:
        chosen = np.sort(np.random.default_rng(seed).choice(len(normal), limit, replace=False))
        normal = [normal[i] for i in chosen]
    return normal


def image_size(settings: Mapping[str, Any], samples: Sequence[Sample]) -> tuple[int, int]:
    """(H, W) the images are read at: the settings' input_size, else their common native size; must divide by
    the stride times the retrieval downsampling so that every grid is whole."""
    stride = settings["stride"]
    if settings["input_size"]:
        size = tuple(int(v) for v in settings["input_size"])
        if size[0] % stride or size[1] % stride:
            raise DataError(
                f"config/{FEATURES_FILE}: input_size {list(size)} of feature set {settings['feature_set']!r} does "
                f"not divide by its stride {stride}; choose a multiple of {stride}"
            )
        return size  # type: ignore[return-value]
    size = (samples[0].height, samples[0].width)
    for sample in samples:
        if (sample.height, sample.width) != size:
            raise DataError(
                f"{sample.image} is {sample.width}x{sample.height}, other images {size[1]}x{size[0]}: set input_size "
                f"of feature set {settings['feature_set']!r} in config/{FEATURES_FILE}"
            )
        if sample.height % stride or sample.width % stride:
            raise DataError(
                f"{sample.image} is {sample.width}x{sample.height} px, not divisible by the residual stride {stride}: "
                f"set input_size of feature set {settings['feature_set']!r} in config/{FEATURES_FILE}"
            )
    return size


def read_batches(
    samples: Sequence[Sample], size: tuple[int, int], batch_size: int, desc: str
) -> Iterator[np.ndarray]:
    for start in tqdm(range(0, len(samples), batch_size), desc=desc, leave=False):
        yield np.stack([s.read_image(size) for s in samples[start : start + batch_size]])


def compute_residual_features(
    dest: str | os.PathLike,
    subsets: Mapping[str, list[Sample]],
    settings: Mapping[str, Any],
    device: torch.device,
    split: str | os.PathLike,
) -> Path:
    """Fit the residual model on the unit's normal training images and write every image's residuals to `dest`.

    A training image never references itself; every other image may reference any training image.
    """
    references = reference_samples(subsets, split, settings["seed"], settings["max_train_images"])
    every = [sample for subset in subsets.values() for sample in subset]
    size = image_size(settings, every)
    stride, batch = settings["stride"], settings["batch_size"]
    grid = (size[0] // stride, size[1] // stride)
    model = ResidualModel(settings, device)
    summary = model.fit(read_batches(references, size, batch, "residual bank"), len(references), grid)
    own_index = {sample.image_id: i for i, sample in enumerate(references)}
    found: list[np.ndarray] = []
    seconds = [0.0]

    def chunks() -> Iterator[np.ndarray]:
        for start, images in zip(
            range(0, len(every), batch), read_batches(every, size, batch, "residuals"), strict=False
        ):
            part = every[start : start + batch]
            started = time.perf_counter()
            residuals, refs = model.residuals(images, [own_index.get(s.image_id) for s in part])
            seconds[0] += time.perf_counter() - started
            found.extend(refs)
            yield residuals.astype(np.float16)

    def after() -> dict[str, np.ndarray]:
        width = max(len(r) for r in found)
        padded = np.full((len(found), width), -1, dtype=np.int32)
        for row, refs in enumerate(found):
            padded[row, : len(refs)] = refs
        # backbone, retrieval, matching and residual per image (batched), for the latency of the consumers
        return {
            "references": padded,
            "seconds_per_image": np.array(seconds[0] / len(every)),
            "device": np.array(str(device)),
        }

    arrays = {
        "image_id": np.array([s.image_id for s in every]),
        "subset": np.array([s.subset for s in every]),
        "train_ids": np.array([s.image_id for s in references]),
        "summary": np.array([summary[k] for k in ("train_images", "patches", "bank_size", "pca_dims")]),
    }
    arrays |= {f"state.{name}": value for name, value in model.state().items()}
    return write_residual_file(
        dest, settings, arrays, (len(every), *grid, settings["embed_dims"]), chunks(), after
    )


def load_residual_model(file: ResidualFile, device: torch.device) -> ResidualModel:
    """The residual model a file was computed with, to compute residuals of new images (synthetic anomalies)."""
    return ResidualModel.from_state(file.settings, file.state(), device)


def residual_features_job(
    dest: Path,
    dataset_ready: Path,
    manifest: str | os.PathLike,
    split: str | os.PathLike,
    dataset: str,
    category: str,
    settings: Mapping[str, Any],
    threads: int = 1,
) -> Path:
    """The rule's job: the unit's samples from manifest and split, a GPU if one is leased, then the stage."""
    from defectbench.data.locations import ready_root
    from defectbench.data.samples import load_samples
    from defectbench.runtime.gpu import gpu_lease, torch_device

    torch.set_num_threads(threads)
    subsets = load_samples(manifest, split, ready_root(dataset, dataset_ready), category)
    with gpu_lease() as leased:
        return compute_residual_features(dest, subsets, settings, torch_device(leased), split)


def run_features(path: Path, dataset: str, category: str, feature_set: str, scale: str) -> ResidualFile:
    """The residual file a run of (dataset, category) declares, opened and checked against the current settings."""
    from defectbench.features.settings import feature_settings

    return ResidualFile(path, feature_settings(feature_set, dataset, category, scale))
