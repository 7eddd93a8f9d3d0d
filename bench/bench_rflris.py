"""RFL+RIS, MIL, WeCLIP and SeCo throughput: training and inference images per second at the paper's input
sizes (RFL+RIS and MIL 512x512, WeCLIP 320x320, SeCo 448x448) with the paper architectures (random weights), on
synthetic RDD2020 images. Training includes everything a step does (RFL: residuals of the augmented images
against RIS's references; CAMs, PAR); inference includes the residual stage's time per image with reference
selection (RFL+RIS: the supplement's 59 ms per image cover it), multi-scale testing and DenseCRF.

    .venv/bin/python bench/bench_rflris.py [--device cuda] [--batch 2] [--steps 2] [--methods rflris mil ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from defectbench import features
from defectbench.data.indexers import index_dataset
from defectbench.data.samples import load_samples
from defectbench.data.splits import make_split
from defectbench.data.synthetic import synthesize
from defectbench.experiments import method_params
from defectbench.io import write_csv
from defectbench.methods.base import build

METHODS = {"rflris": ("rflris", {}), "mil": ("rflris", {"rfl_ris": False, "feature_set": None}), "weclip": ("weclip", {}),
           "seco": ("seco", {})}  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def samples(folder: Path) -> dict:
    root = synthesize("rdd2020", folder / "rdd2020", seed=0, n_per_country=10, image_size=512)
    manifest = index_dataset("rdd2020", root, check_counts=False)
    split = make_split("rdd2020", "rdd_70_30", manifest, synthetic=True, seed=0)
    return load_samples(
        write_csv(folder / "m.csv", manifest), write_csv(folder / "s.csv", split), root, "rdd2020"
    )


def measure(
    name: str, data: dict, device: torch.device, batch: int, steps: int, folder: Path
) -> tuple[float, float]:
    """(training images/s over `steps` iterations of `batch`, inference images/s over the test images)."""
    method, overrides = METHODS[name]
    settings = {
        "pretrained": False,
        "iterations": steps,
        "batch_size": batch,
        "log_every": steps,
        "warmup_steps": 1,
    }
    params = method_params(method, "rdd2020", "paper", {**overrides, **settings})
    model = build(method, params, device, seed=0)
    residual_seconds = 0.0
    if params.get("feature_set"):  # RFL: the shared stage's residuals (bank and RIS fitted once, not timed)
        feature_settings = {**features.feature_settings(params["feature_set"], "rdd2020", "rdd2020", "paper"),
                            "pretrained": False}  # fmt: skip
        model.features = features.ResidualFile(
            features.compute_residual_features(folder / "r.npz", data, feature_settings, device, "split")
        )
        # the stage's time per test image (backbone, RIS, matching) is part of RFL+RIS's inference
        residual_seconds = float(model.features.arrays["seconds_per_image"]) * len(data["test"])
    _sync(device)
    start = time.perf_counter()
    model.fit(data["train"])
    _sync(device)
    train_rate = steps * batch / (time.perf_counter() - start)
    start = time.perf_counter()
    model.predict(data["test"], (128, 128))
    _sync(device)
    return train_rate, len(data["test"]) / (time.perf_counter() - start + residual_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        data = samples(Path(folder))
        print(
            f"device {device}, batch {args.batch}, {args.steps} training steps, {len(data['test'])} test images"
        )
        for name in args.methods:
            train_rate, infer_rate = measure(name, data, device, args.batch, args.steps, Path(folder))
            print(f"{name:8s} train {train_rate:7.2f} img/s   inference {infer_rate:7.2f} img/s")


if __name__ == "__main__":
    main()
