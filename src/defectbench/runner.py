"""Train, predict and evaluate one run (dataset, category, experiment, seed): what the workflow's rules call."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from defectbench import paths
from defectbench.data.images import DataError
from defectbench.data.registry import dataset_root as registry_root
from defectbench.data.samples import Sample, load_samples
from defectbench.experiments import Run, config_hash, load_experiments, method_params
from defectbench.io import atomic_path, write_csv, write_json
from defectbench.predictions import Predictions


def dataset_dir(dataset: str, config: Mapping[str, Any]) -> Path:
    """Where the dataset is extracted (real) or synthesized (demo): resources/{datasets,synthetic}/<dataset>."""
    synthetic = config["datasets"][dataset]["source"] == "synthetic"
    return Path(paths.SYNTHETIC_DIR if synthetic else paths.DATASETS_DIR) / dataset


def dataset_root(dataset: str, config: Mapping[str, Any]) -> Path:
    """The folder holding the dataset's own layout (the registry's `root` inside its dataset_dir)."""
    return registry_root(dataset, dataset_dir(dataset, config))


DEFAULT_METRICS = ["i_auroc", "i_ap", "p_auroc", "p_ap", "pro"]
MASK_METRICS = {"p_auroc", "p_ap", "pro", "iou", "miou", "precision", "recall"}


def threshold_rule(spec: str | float) -> str | float:
    """An experiment's `threshold:` (`otsu`, `best_f1`, `fixed:<v>` or a number) as defectbench.metrics takes it."""
    if isinstance(spec, int | float):
        return float(spec)
    if spec.startswith("fixed:"):
        return float(spec.removeprefix("fixed:"))
    if spec in ("otsu", "best_f1"):
        return spec
    raise ValueError(f"unknown threshold {spec!r}: use otsu, best_f1 or fixed:<value>")


def scaled_boxes(sample: Sample, size: tuple[int, int]) -> list[tuple[float, float, float, float, str]]:
    """A sample's ground-truth boxes in the pixel coordinates of a map of `size` = (H, W)."""
    sy, sx = size[0] / sample.height, size[1] / sample.width
    return [(x1 * sx, y1 * sy, x2 * sx, y2 * sy, cls) for x1, y1, x2, y2, cls in sample.boxes]


def run_file(template: str, run: Run) -> Path:
    return Path(template.format(**run.__dict__))


class RunContext:
    """Everything resolved for one run: experiment, hyper-parameters, samples."""

    def __init__(self, run: Run, config: Mapping[str, Any], config_dir: Path = Path("config")):
        self.run = run
        self.config = config
        self.experiment = load_experiments(config_dir)[run.experiment]
        self.method = self.experiment["method"]
        self.params = method_params(
            self.method, run.dataset, config["scale"], self.experiment.get("params"), config_dir
        )
        self.eval_size = tuple(config["datasets"][run.dataset]["eval_size"])

    def samples(self) -> dict[str, list[Sample]]:
        protocol = self.experiment["protocol"]
        return load_samples(
            paths.MANIFEST.format(dataset=self.run.dataset),
            paths.SPLIT.format(dataset=self.run.dataset, protocol=protocol),
            dataset_root(self.run.dataset, self.config),
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

    def hash(self) -> str:
        return config_hash(self.experiment, self.params, self.config["datasets"][self.run.dataset])


def _load_method(run: Run, context: RunContext, device: Any) -> Any:
    import torch

    from defectbench.methods.base import build

    saved = torch.load(run_file(paths.MODEL, run), map_location="cpu", weights_only=False)
    method = build(context.method, context.params, device, run.seed, run.directory)
    method.load_state_dict(saved["state"])
    return method


def _fitted_method(run: Run, context: RunContext, device: Any, fit: bool) -> Any:
    """The run's method with its upstream attached: freshly fitted (fit=True) or loaded from model.pt."""
    from defectbench.methods.base import build

    if fit:
        method = build(context.method, context.params, device, run.seed, run.directory)
    else:
        method = _load_method(run, context, device)
    upstream = context.experiment.get("upstream")
    if upstream:
        upstream_run = Run(run.dataset, run.category, upstream, run.seed)
        method.upstream = _load_method(upstream_run, RunContext(upstream_run, context.config), device)
    return method


def train(run: Run, config: Mapping[str, Any], threads: int = 1) -> Path:
    """Fit the run's method on its training subset; writes model.pt, train_log.csv and the training time."""
    import torch

    from defectbench.runtime.gpu import gpu_lease, torch_device
    from defectbench.training import seed_everything

    torch.set_num_threads(threads)
    context = RunContext(run, config)
    subsets = context.samples()
    if not subsets.get("train"):
        raise DataError(
            f"split {context.experiment['protocol']} of {run.dataset}/{run.category} has no training images"
        )
    run.directory.mkdir(parents=True, exist_ok=True)
    with gpu_lease() as leased:
        device = torch_device(leased)
        seed_everything(run.seed)
        method = _fitted_method(run, context, device, fit=True)
        started = time.perf_counter()
        log = method.fit(subsets["train"], subsets.get("val"))
        seconds = time.perf_counter() - started
        payload = {"method": context.method, "params": context.params, "state": method.state_dict()}
    with atomic_path(run_file(paths.MODEL, run)) as tmp:
        torch.save(payload, tmp)
    write_csv(run_file(paths.TRAIN_LOG, run), pd.DataFrame(log or [{"epoch": 0}]))
    write_json(run_file(paths.TRAIN_TIME, run), {"seconds": seconds, "device": str(device)})
    run_file(paths.CHECKPOINT, run).unlink(missing_ok=True)
    return run_file(paths.MODEL, run)


def predict(run: Run, config: Mapping[str, Any], threads: int = 1) -> Path:
    """Maps and scores of the evaluation subset from model.pt; writes predictions.npz and the prediction time."""
    import torch

    from defectbench.runtime.gpu import gpu_lease, torch_device

    torch.set_num_threads(threads)
    context = RunContext(run, config)
    samples = context.eval_samples()
    with gpu_lease() as leased:
        device = torch_device(leased)
        method = _fitted_method(run, context, device, fit=False)
        started = time.perf_counter()
        predictions = method.predict(samples, context.eval_size)  # methods choose no_grad themselves
        seconds = time.perf_counter() - started
    if list(predictions.image_id) != [s.image_id for s in samples]:
        raise RuntimeError(f"{context.method}.predict returned images in another order than it was given")
    if predictions.maps.shape[1:] != context.eval_size:
        raise RuntimeError(
            f"{context.method}.predict returned maps of {predictions.maps.shape[1:]}, not {context.eval_size}"
        )
    predictions.save(run_file(paths.PREDICTIONS, run))
    write_json(
        run_file(paths.PREDICT_TIME, run), {"seconds": seconds, "device": str(device), "n": len(samples)}
    )
    return run_file(paths.PREDICTIONS, run)


def evaluate(run: Run, config: Mapping[str, Any]) -> Path:
    """Metrics of the predictions against the ground truth; writes metrics.json (DESIGN.md contract)."""
    from defectbench.metrics import evaluate as compute_metrics

    context = RunContext(run, config)
    samples = context.eval_samples()
    predictions = Predictions.load(run_file(paths.PREDICTIONS, run))
    if list(predictions.image_id) != [s.image_id for s in samples]:
        raise DataError(
            f"{run_file(paths.PREDICTIONS, run)} does not match the split's images; re-run predict"
        )
    experiment = context.experiment
    metrics = experiment.get("metrics", DEFAULT_METRICS)
    f1_level = experiment.get("f1_level", "image")
    size = predictions.maps.shape[1:]
    needs_masks = bool(set(metrics) & MASK_METRICS) or ("f1" in metrics and f1_level == "pixel")
    masks = np.stack([sample.read_mask(size) for sample in samples]) if needs_masks else None
    boxes = [scaled_boxes(sample, size) for sample in samples] if "box_ap" in metrics else None
    labels = np.array([sample.label for sample in samples])
    started = time.perf_counter()
    values = compute_metrics(
        predictions.score,
        labels,
        predictions.maps,
        masks,
        metrics,
        boxes=boxes,
        threshold=threshold_rule(experiment.get("threshold", "otsu")),
        f1_level=f1_level,
    )
    train_time = _read_json(run_file(paths.TRAIN_TIME, run))
    predict_time = _read_json(run_file(paths.PREDICT_TIME, run))
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
            "train": train_time.get("seconds"),
            "predict": predict_time.get("seconds"),
            "evaluate": time.perf_counter() - started,
        },
        "device": predict_time.get("device", "unknown"),
        "synthetic": config["datasets"][run.dataset]["source"] == "synthetic",
        "scale": config["scale"],
        "git_commit": git_commit(),
        "config_hash": context.hash(),
        "python": platform.python_version(),
    }
    return write_json(run_file(paths.METRICS, run), result)


def collect(metrics_files: list[Path], dest: Path, config: Mapping[str, Any]) -> Path:
    """All metrics.json in one long table: one row per (dataset, category, experiment, seed, metric).

    A record measured on another kind of data (synthetic vs real) than the config names is refused, so demo
    numbers never reach a table of the real reproduction.
    """
    rows = []
    for path in metrics_files:
        record = _read_json(Path(path))
        synthetic = config["datasets"][record["dataset"]]["source"] == "synthetic"
        if record["synthetic"] != synthetic:
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
    columns = ["dataset", "category", "experiment", "seed", "metric", "value", "n_images", "device", "synthetic",
               "git_commit", "config_hash"]  # fmt: skip
    frame = pd.DataFrame(rows, columns=columns).sort_values(
        ["dataset", "category", "experiment", "seed", "metric"]
    )
    return write_csv(dest, frame)


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}
