"""What the GPU check verifies in the files a run left behind, and the determinism comparison of two runs."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import platform
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from defectbench import paths
from defectbench.experiments import CONFIG_DIR, load_experiments, read_yaml
from defectbench.gpu_check.selection import SmokeRun, run_cost
from defectbench.plan import Run
from defectbench.provenance import git_commit

RUN_FILES = ("model.pt", "predictions.npz", "metrics.json", "train_time.json", "predict_time.json")


@functools.cache
def experiment(name: str) -> dict[str, Any]:
    return load_experiments()[name]


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def environment(device: str) -> dict[str, Any]:
    """Versions and the GPU, without initialising CUDA (the memory step leases the GPU first)."""
    import faiss
    import torch

    info: dict[str, Any] = {
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "faiss": faiss.__version__,
        "faiss_gpu_build": hasattr(faiss, "StandardGpuResources"),
        "snakemake": importlib.metadata.version("snakemake"),
        "gpus_visible_to_torch": torch.cuda.device_count(),
    }
    if device == "cuda" and not info["faiss_gpu_build"]:
        info["faiss_note"] = ("faiss-cpu is installed: kNN search ran on the CPU; `make install-gpu` installs the "
                              "CUDA build (the `gpu` extra)")  # fmt: skip
    return info


def inspect_run(work: Path, run: Run, device: str, faiss_gpu: bool = False) -> dict[str, Any]:
    """Per-run record: where train and predict ran, their peaks and times; problems if not on the right device
    (and, with the CUDA build of faiss installed, if a CUDA job searched its kNN index on the CPU)."""
    record: dict[str, Any] = {"problems": []}
    directory = work / run.directory
    for stage, name in (("train", "train_time.json"), ("predict", "predict_time.json")):
        time_file = directory / name
        log = work / paths.LOGS.format(
            rule=stage, name=f"{run.dataset}/{run.category}/{run.experiment}/seed{run.seed}"
        )
        if not time_file.exists():
            record["problems"].append(f"{stage} did not finish (no {name}; see {log})")
            continue
        report = read_json(time_file)
        record[stage] = report
        lease_line = _log_line(log, ("leased GPU", "running on CPU"))
        report["lease_log"] = lease_line
        knn_line = _log_line(log, ("faiss kNN index",))
        if knn_line:
            report["knn_log"] = knn_line
            if device == "cuda" and faiss_gpu and "on the GPU" not in knn_line:
                record["problems"].append(
                    f"{stage}: the CUDA build of faiss is installed but kNN ran on the CPU"
                )
        if device == "cuda":
            if report.get("device") != "cuda:0" or not report.get("leased_gpu"):
                record["problems"].append(f"{stage} ran on {report.get('device')}, not on a leased GPU")
            if not report.get("max_memory_allocated_bytes"):
                record["problems"].append(f"{stage} allocated no GPU memory")
            if not lease_line or "leased GPU" not in lease_line:
                record["problems"].append(f"the {stage} log names no leased GPU ({log})")
        elif report.get("device") != "cpu" or not lease_line or "running on CPU" not in lease_line:
            record["problems"].append(
                f"{stage} did not run on the CPU as asked (device {report.get('device')})"
            )
    predict = record.get("predict")
    if predict and predict.get("n"):
        record["predict_ms_per_image"] = round(1000 * predict["seconds"] / predict["n"], 2)
    metrics_file = directory / "metrics.json"
    if metrics_file.exists():
        record["metrics"] = read_json(metrics_file)["metrics"]
    else:
        record["problems"].append("no metrics.json (evaluation did not finish)")
    return record


def _log_line(log: Path, markers: tuple[str, ...]) -> str | None:
    """The first line of a job log holding one of `markers` (the lease's "leased GPU 0 ..." or "running on CPU",
    the kNN index's device), without its time stamp."""
    if not log.exists():
        return None
    for line in log.read_text(errors="replace").splitlines():
        if any(marker in line for marker in markers):
            return line.split(": ", 1)[-1]
    return None


def determinism_run(runs: list[SmokeRun], config: Mapping[str, Any]) -> Run:
    """The cheapest chosen run of the first configured paper that has one (its own method), else the cheapest."""
    for paper in config["papers"]:
        paper_experiments = _paper_experiments(paper)
        own = [s for s in runs if s.run.experiment in paper_experiments]
        if own:
            return min(own, key=lambda s: (run_cost(s.run, config), s.run)).run
    return min(runs, key=lambda s: (run_cost(s.run, config), s.run)).run


def _paper_experiments(paper: str) -> set[str]:
    """The experiments defined in config/experiments/<paper>.yaml: the paper's own method, not its baselines."""
    path = CONFIG_DIR / "experiments" / f"{paper}.yaml"
    return set(read_yaml(path)) & set(load_experiments()) if path.exists() else set()


def keep_copy(work: Path, run: Run, dest: Path) -> None:
    """Copy the run's results aside before it is re-run."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in RUN_FILES:
        shutil.copy2(work / run.directory / name, dest / name)


def compare_runs(first: Path, second: Path) -> dict[str, Any]:
    """What is bit-identical between two results of the same run: metrics, predictions, model weights."""
    import torch

    from defectbench.predictions import Predictions

    metrics = [read_json(d / "metrics.json")["metrics"] for d in (first, second)]
    report: dict[str, Any] = {
        "metrics_identical": metrics[0] == metrics[1],
        "metric_differences": {
            k: abs(metrics[0][k] - metrics[1][k]) for k in metrics[0] if metrics[0][k] != metrics[1].get(k)
        },
    }
    predictions = [Predictions.load(d / "predictions.npz") for d in (first, second)]
    for name in ("score", "maps"):
        a, b = (np.asarray(getattr(p, name), dtype=np.float64) for p in predictions)
        report[f"{name}_identical"] = bool(np.array_equal(a, b))
        report[f"{name}_max_abs_difference"] = float(np.max(np.abs(a - b))) if a.shape == b.shape else None
    states = [
        torch.load(d / "model.pt", map_location="cpu", weights_only=False)["state"] for d in (first, second)
    ]
    tensors = [dict(_tensors(state)) for state in states]
    differing = [k for k in tensors[0] if not torch.equal(tensors[0][k], tensors[1].get(k, torch.empty(0)))]
    report["weights_tensors"] = len(tensors[0])
    report["weights_differing"] = differing[:20]
    report["weights_identical"] = not differing and tensors[0].keys() == tensors[1].keys()
    report["weights_max_abs_difference"] = max(
        (float((tensors[0][k].double() - tensors[1][k].double()).abs().max()) for k in differing
         if tensors[0][k].shape == tensors[1][k].shape and tensors[0][k].is_floating_point()), default=0.0,
    )  # fmt: skip
    return report


def _tensors(state: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every tensor and array in a (nested) model state, by dotted path, as tensors."""
    import torch

    if isinstance(state, torch.Tensor):
        return [(prefix, state)]
    if isinstance(state, np.ndarray) and state.dtype.kind in "fiub":
        return [(prefix, torch.from_numpy(np.ascontiguousarray(state)))]
    if isinstance(state, Mapping):
        return [
            item for key, value in state.items() for item in _tensors(value, f"{prefix}.{key}".strip("."))
        ]
    if isinstance(state, list | tuple):
        return [item for i, value in enumerate(state) for item in _tensors(value, f"{prefix}.{i}".strip("."))]
    return []
