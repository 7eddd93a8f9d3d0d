"""Train, predict and evaluate one run (dataset, unit, experiment, seed) from the files its rule declares."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from defectbench.data.images import DataError
from defectbench.data.locations import is_synthetic, ready_root
from defectbench.data.samples import Sample, load_samples
from defectbench.experiments import (
    CONFIG_DIR,
    load_experiments,
    method_params,
    pretrain_units,
    run_settings,
    texture_dataset,
)
from defectbench.io import write_csv, write_json, write_torch
from defectbench.plan import Run
from defectbench.predictions import Predictions
from defectbench.provenance import config_hash, git_commit
from defectbench.runtime.runlock import holds_run


@dataclass(frozen=True)
class RunInputs:
    """The files a run reads, as its rule declares them (snakemake.input)."""

    dataset_ready: (
        Path  # resources/<dataset>.ready: names the folder the dataset was extracted or synthesized to
    )
    manifest: Path
    split: Path
    upstream_model: Path | None = None  # model.pt of the experiment's `upstream:` run
    features: Path | None = (
        None  # the shared residual file of the method's `feature_set` (defectbench.features)
    )
    # per unit of `pretrain_on` (experiments.pretrain_units order): dataset marker, manifest, split, residual file
    pretrain: tuple[tuple[Path, Path, Path, Path], ...] = ()
    # (dataset marker, manifest) of the texture dataset of the method's synthetic anomalies (anomaly.texture_source)
    textures: tuple[Path, Path] | None = None


class RunContext:
    """Everything resolved for one run: experiment, hyper-parameters, samples."""

    def __init__(self, run: Run, config: Mapping[str, Any], inputs: RunInputs, config_dir: Path = CONFIG_DIR):
        self.run = run
        self.config = config
        self.inputs = inputs
        self.experiment = load_experiments(config_dir)[run.experiment]
        self.method = self.experiment["method"]
        self.params = method_params(
            self.method, run.dataset, config["scale"], self.experiment.get("params"), config_dir
        )
        # a method's own `eval_size` (e.g. RA-CAM's 224×640 on KSDD2) overrides the dataset's
        self.eval_size = tuple(self.params.get("eval_size") or config["datasets"][run.dataset]["eval_size"])
        self.config_dir = config_dir

    def samples(self) -> dict[str, list[Sample]]:
        return load_samples(
            self.inputs.manifest,
            self.inputs.split,
            ready_root(self.run.dataset, self.inputs.dataset_ready),
            self.run.category,
        )

    def eval_samples(self) -> list[Sample]:
        subset = self.experiment.get("eval_subset", "test")
        samples = self.samples().get(subset)
        if not samples:
            raise DataError(
                f"split {self.experiment['protocol']} of {self.run.dataset} has no {subset!r} images"
            )
        return samples

    def upstream_params(self) -> tuple[str, dict[str, Any]]:
        """(method, resolved hyper-parameters) of the experiment's upstream run."""
        upstream = load_experiments(self.config_dir)[self.experiment["upstream"]]
        params = method_params(
            upstream["method"],
            self.run.dataset,
            self.config["scale"],
            upstream.get("params"),
            self.config_dir,
        )
        return upstream["method"], params

    def hash(self) -> str:
        """Hash of the run's resolved settings, the same ones its jobs receive as a Snakemake param."""
        return config_hash(
            run_settings(self.run.dataset, self.run.experiment, self.config, config_dir=self.config_dir)
        )


def _load_method(name: str, params: Mapping[str, Any], model: Path, seed: int, device: Any) -> Any:
    import torch

    from defectbench.methods.base import build

    saved = torch.load(model, map_location="cpu", weights_only=False)
    method = build(name, params, device, seed, model.parent)
    method.load_state_dict(saved["state"])
    return method


def _pretrain_units(context: RunContext, feature_set: str) -> list[tuple[list[Sample], Any]]:
    """(every image, opened residual file) of each unit the method pre-trains on, from the declared files."""
    from defectbench.features.stage import run_features

    units = pretrain_units(context.params, context.run.dataset, context.run.category, context.config)
    if len(units) != len(context.inputs.pretrain):
        raise ValueError(
            f"{context.run.experiment} pre-trains on {units} but {len(context.inputs.pretrain)} were given"
        )
    pretrain = []
    for (dataset, category), (ready, manifest, split, features) in zip(
        units, context.inputs.pretrain, strict=True
    ):
        subsets = load_samples(manifest, split, ready_root(dataset, ready), category)
        samples = [sample for subset in subsets.values() for sample in subset]
        pretrain.append(
            (samples, run_features(features, dataset, category, feature_set, context.config["scale"]))
        )
    return pretrain


def _fitted_method(context: RunContext, device: Any, model: Path, fit: bool) -> Any:
    """The run's method with its upstream attached: freshly built to fit (fit=True) or loaded from `model`."""
    from defectbench.methods.base import build

    run = context.run
    if fit:
        method = build(context.method, context.params, device, run.seed, model.parent)
    else:
        method = _load_method(context.method, context.params, model, run.seed, device)
    feature_set = context.params.get("feature_set")
    if feature_set:  # the shared residual stage's file, checked against the current settings
        from defectbench.features.stage import run_features

        if context.inputs.features is None:
            raise ValueError(
                f"{run.experiment} names feature set {feature_set!r} but no residual file was given"
            )
        method.features = run_features(context.inputs.features, run.dataset, run.category, feature_set,
                                       context.config["scale"])  # fmt: skip
    if fit and context.inputs.pretrain:
        method.pretrain = _pretrain_units(context, feature_set)
    textures = texture_dataset(context.params, context.config)
    if fit and textures:
        from defectbench.data.textures import texture_files

        if context.inputs.textures is None:
            raise ValueError(
                f"{run.experiment} draws textures from {textures!r} but no texture dataset was given"
            )
        ready, manifest = context.inputs.textures
        method.textures = texture_files(
            textures, ready, manifest, context.config["datasets"][textures]["categories"]
        )
    if context.experiment.get("upstream"):
        if context.inputs.upstream_model is None:
            raise ValueError(f"{run.experiment} has an upstream experiment but no upstream model was given")
        name, params = context.upstream_params()
        method.upstream = _load_method(name, params, Path(context.inputs.upstream_model), run.seed, device)
    return method


@holds_run  # one job per run: never two trainings on one checkpoint
def train(
    run: Run,
    config: Mapping[str, Any],
    inputs: RunInputs,
    model: Path,
    train_log: Path,
    train_time: Path,
    threads: int = 1,
) -> Path:
    """Fit the run's method on its training subset; writes model.pt, train_log.csv and the training time."""
    import torch

    from defectbench.runtime.gpu import device_report, gpu_lease, torch_device
    from defectbench.training import seed_everything, training_run

    torch.set_num_threads(threads)
    context = RunContext(run, config, inputs)
    subsets = context.samples()
    if not subsets.get("train"):
        raise DataError(
            f"split {context.experiment['protocol']} of {run.dataset}/{run.category} has no training images"
        )
    model = Path(model)
    model.parent.mkdir(parents=True, exist_ok=True)
    with gpu_lease() as leased:
        device = torch_device(leased)
        seed_everything(run.seed)
        method = _fitted_method(context, device, model, fit=True)
        with training_run(context.hash()) as record:  # a checkpoint resumes only under these settings
            log = method.fit(subsets["train"], subsets.get("val"))
        seconds = record.elapsed_s()  # including the training before the checkpoint it resumed from
        payload = {"method": context.method, "params": context.params, "state": method.state_dict()}
        ran_on = device_report(device, leased)
    write_torch(model, payload)
    write_csv(train_log, pd.DataFrame(log or [{"epoch": 0}]))
    write_json(train_time, {"seconds": seconds, **ran_on})
    if method.checkpoint_path is not None:
        method.checkpoint_path.unlink(missing_ok=True)
    return model


def predict(
    run: Run,
    config: Mapping[str, Any],
    inputs: RunInputs,
    model: Path,
    predictions: Path,
    predict_time: Path,
    threads: int = 1,
) -> Path:
    """Maps and scores of the evaluation subset from model.pt; writes predictions.npz and the prediction time."""
    import torch

    from defectbench.runtime.gpu import device_report, gpu_lease, torch_device
    from defectbench.training import deterministic_algorithms

    torch.set_num_threads(threads)
    context = RunContext(run, config, inputs)
    samples = context.eval_samples()
    with gpu_lease() as leased:
        device = torch_device(leased)
        deterministic_algorithms()
        method = _fitted_method(context, device, Path(model), fit=False)
        started = time.perf_counter()
        predicted = method.predict(samples, context.eval_size)  # methods choose no_grad themselves
        seconds = time.perf_counter() - started
        ran_on = device_report(device, leased)
    if list(predicted.image_id) != [s.image_id for s in samples]:
        raise RuntimeError(f"{context.method}.predict returned images in another order than it was given")
    if predicted.maps.shape[1:] != context.eval_size:
        raise RuntimeError(
            f"{context.method}.predict returned maps of {predicted.maps.shape[1:]}, not {context.eval_size}"
        )
    predicted.save(predictions)
    timing = {"seconds": seconds, "n": len(samples), **ran_on}
    if (
        getattr(method, "latency_ms", None) is not None
    ):  # measured by the method per image (WeakREST Tables V, VIII, X)
        timing["latency_ms"] = float(method.latency_ms)
    write_json(predict_time, timing)
    return Path(predictions)


def evaluate(
    run: Run,
    config: Mapping[str, Any],
    inputs: RunInputs,
    predictions: Path,
    train_time: Path,
    predict_time: Path,
    metrics: Path,
) -> Path:
    """Metrics of the predictions against the ground truth; writes metrics.json (docs/DESIGN.md contract)."""
    from defectbench.metrics import DEFAULT_METRICS, needs_masks, scale_boxes, threshold_rule
    from defectbench.metrics import evaluate as compute_metrics
    from defectbench.metrics.clicks import is_click_metric
    from defectbench.metrics.clicks import metrics_from_predictions as click_metrics

    context = RunContext(run, config, inputs)
    samples = context.eval_samples()
    predicted = Predictions.load(predictions)
    if list(predicted.image_id) != [s.image_id for s in samples]:
        raise DataError(f"{predictions} does not match the split's images; re-run predict")
    experiment = context.experiment
    names = experiment.get("metrics", list(DEFAULT_METRICS))
    click_names = [name for name in names if is_click_metric(name)]  # measured by the click protocol
    names = [name for name in names if name not in click_names]
    f1_level = experiment.get("f1_level", "image")
    size = predicted.maps.shape[1:]
    with_masks = needs_masks(names, f1_level) or bool(click_names)
    masks = np.stack([sample.read_mask(size) for sample in samples]) if with_masks else None
    boxes = [scale_boxes(s.boxes, (s.height, s.width), size) for s in samples] if "box_ap" in names else None
    labels = np.array([sample.label for sample in samples])
    started = time.perf_counter()
    values = compute_metrics(
        predicted.score,
        labels,
        predicted.maps,
        masks,
        [name for name in names if name != "latency_ms"],
        boxes=boxes,
        box_classes=experiment.get("classes"),
        threshold=threshold_rule(experiment.get("threshold", "otsu")),
        f1_level=f1_level,
    )
    if click_names:
        if predicted.click_ious is None:
            raise DataError(f"{predictions} holds no click curves: {context.method} is not a click model")
        values |= click_metrics(predicted.click_ious, predicted.click_maps, masks, click_names)
    trained, predicted_time = read_timing(train_time), read_timing(predict_time)
    if "latency_ms" in names:
        if "latency_ms" not in predicted_time:
            raise DataError(f"{predict_time} has no latency_ms; re-run predict")
        values["latency_ms"] = predicted_time["latency_ms"]
    result = {
        "dataset": run.dataset,
        "category": run.category,
        "experiment": run.experiment,
        "seed": run.seed,
        "method": context.method,
        "metrics": {k: float(v) for k, v in values.items()},
        "n_images": len(samples),
        "n_defective": int(labels.sum()),
        "wall_time_s": {
            "train": trained["seconds"],
            "predict": predicted_time["seconds"],
            "evaluate": time.perf_counter() - started,
        },
        "device": predicted_time.get("device", "unknown"),
        "synthetic": is_synthetic(run.dataset, config),
        "scale": config["scale"],
        "git_commit": git_commit(),
        "config_hash": context.hash(),
        "python": platform.python_version(),
    }
    return write_json(metrics, result)


def count_split(run: Run, config: Mapping[str, Any], manifest: Path, split: Path, metrics: Path) -> Path:
    """metrics.json of a `kind: split_counts` experiment: images per label and subset of its split, no model."""
    from defectbench.data.samples import MANIFEST_COLUMNS, SPLIT_COLUMNS, read_table
    from defectbench.data.split_counts import label_counts

    experiment = load_experiments()[run.experiment]
    rows = read_table(split, SPLIT_COLUMNS)
    rows = rows[rows["category"] == run.category]
    if rows.empty:
        raise DataError(f"{split} has no rows for category {run.category!r}")
    counts = label_counts(read_table(manifest, MANIFEST_COLUMNS), rows, experiment["classes"])
    record = {
        "dataset": run.dataset,
        "category": run.category,
        "experiment": run.experiment,
        "seed": run.seed,
        "method": "split",
        "metrics": counts,
        "n_images": len(rows),
        "wall_time_s": {},
        "device": "cpu",
        "synthetic": is_synthetic(run.dataset, config),
        "scale": config["scale"],
        "git_commit": git_commit(),
        "config_hash": config_hash(experiment, config["datasets"][run.dataset]),
        "python": platform.python_version(),
    }
    return write_json(metrics, record)


def read_timing(path: Path) -> dict[str, Any]:
    """A train_time.json / predict_time.json; DataError naming the file when it is missing or malformed."""
    try:
        timing = json.loads(Path(path).read_text())
        float(timing["seconds"])
    except FileNotFoundError as err:
        raise DataError(f"{path} is missing; re-run the job that writes it (train or predict)") from err
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path} is malformed ({err}); delete it and re-run the job that writes it") from err
    return timing
