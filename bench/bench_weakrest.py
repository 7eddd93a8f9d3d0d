"""WeakREST benchmark: the shared residual stage (images/s) and the inference latency per image at the paper's
512×512 with the paper's settings (random weights: speed does not depend on them), beside the paper's 39.7 ms on an
RTX 4090 (Table VIII); and how many residual computations the demo plans against how many WeakREST runs read them.

    python bench/bench_weakrest.py [--device cuda] [--train 8] [--test 4] [--feature-set adclick]

`--feature-set adclick` times the stage with ADClick's location-aware stride-4 settings instead (residuals only).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
import torch

from defectbench.experiments import deep_merge, load_experiments, method_params, read_yaml
from defectbench.features.residual import ResidualModel
from defectbench.features.settings import feature_settings
from defectbench.methods.weakrest.model import ResidualTransformer, residual_tokens
from defectbench.plan import planned_runs

PAPER_LATENCY_MS = 39.7  # Table VIII, full model, RTX 4090


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def residual_stage(
    device: torch.device, feature_set: str, n_train: int, n_test: int
) -> tuple[float, tuple[int, ...]]:
    """Seconds per image of the residual computation (retrieval, matching, residual) after fitting the bank."""
    settings = deep_merge(feature_settings(feature_set, "mvtec_ad", "bottle", "paper"), {"pretrained": False})
    rng = np.random.default_rng(0)
    size = tuple(settings["input_size"])
    train = rng.integers(0, 256, (n_train, *size, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (n_test, *size, 3), dtype=np.uint8)
    model = ResidualModel(settings, device)
    grid = (size[0] // settings["stride"], size[1] // settings["stride"])
    model.fit((train[i : i + 4] for i in range(0, n_train, 4)), n_train, grid)
    model.residuals(test[:1])  # warm-up
    synchronize(device)
    started = time.perf_counter()
    for image in test:
        residuals, _ = model.residuals(image[None])
    synchronize(device)
    return (time.perf_counter() - started) / n_test, residuals.shape


def classifier(device: torch.device, shape: tuple[int, ...], n_test: int) -> float:
    """Seconds per image of the paper-scale residual Swin (tokens → map)."""
    p = method_params("weakrest", "mvtec_ad", "paper")
    network = ResidualTransformer(
        shape[-1], p["embed_dims"], p["depth"], p["heads"], p["window"], shape[1:3]
    ).to(device)
    network.eval()
    residuals = torch.randn(1, *shape[1:], device=device)
    with torch.no_grad():
        network(residual_tokens(residuals, tuple(p["thetas"])))
        synchronize(device)
        started = time.perf_counter()
        for _ in range(n_test):
            torch.sigmoid(network(residual_tokens(residuals, tuple(p["thetas"]))))
        synchronize(device)
    return (time.perf_counter() - started) / n_test


def demo_plan() -> tuple[int, int]:
    """(WeakREST runs, residual files) the demo config plans: each file is computed once for all its runs."""
    config = read_yaml(__import__("pathlib").Path("config/config.yaml"))
    experiments = load_experiments()
    runs = [r for r in planned_runs(config) if experiments[r.experiment].get("method") == "weakrest"]
    files = Counter(
        (
            r.dataset,
            r.category,
            method_params("weakrest", r.dataset, "demo", experiments[r.experiment].get("params"))[
                "feature_set"
            ],
        )
        for r in runs
    )
    return len(runs), len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:k]")
    parser.add_argument("--train", type=int, default=8, help="normal training images of the bank")
    parser.add_argument("--test", type=int, default=4, help="timed test images")
    parser.add_argument("--feature-set", default="weakrest", help="config/features.yaml set of the stage")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    seconds, shape = residual_stage(device, args.feature_set, args.train, args.test)
    print(f"device {device} ({torch.get_num_threads()} threads), 512x512, bank of {args.train} images")
    print(
        f"residual stage ({args.feature_set}): {1 / seconds:.2f} images/s ({1000 * seconds:.0f} ms/image), "
        f"residuals {shape[1:]}"
    )
    if args.feature_set != "weakrest":
        return
    swin = classifier(device, shape, args.test)
    print(f"residual Swin classifier: {1000 * swin:.0f} ms/image")
    print(
        f"latency per image: {1000 * (seconds + swin):.0f} ms (paper: {PAPER_LATENCY_MS} ms on an RTX 4090)"
    )
    runs, files = demo_plan()
    print(
        f"demo plan: {runs} WeakREST runs read {files} residual files (each computed once by rule residual_features)"
    )


if __name__ == "__main__":
    main()
