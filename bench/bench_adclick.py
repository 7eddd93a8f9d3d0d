"""Time per click (one model forward after the image is prepared) of the click models of ADClick Table 1 at their
input sizes, and the shared residual stage's time per image (as recorded in a residual file).

    .venv/bin/python bench/bench_adclick.py [--device cuda] [--repeats 3] [--scale paper|demo] [--threads 1]
        [--features results/features/mvtec_ad/carpet/adclick/residuals.npz]

Random weights (timing only). SAM embeds the image once per image (prepare); ADClick's per-image work is the
residual stage (--features); SimpleClick and GPCIS run their whole network per click.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from defectbench.experiments import method_params
from defectbench.methods.adclick.model import ADClickNet
from defectbench.methods.adclick.train import ADClickClickModel, ClickItem
from defectbench.methods.click_baselines import FinetunedClickMethod
from defectbench.methods.gpcis import GPCIS
from defectbench.methods.sam.method import SamClickModel, build_sam
from defectbench.methods.simpleclick import SimpleClick
from defectbench.metrics.clicks import Click


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of `fn` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def clicks(size: int) -> list[Click]:
    return [
        Click(size // 3, size // 3, True),
        Click(size // 2, size // 2, False),
        Click(size // 4, size // 2, True),
    ]


@torch.no_grad()
def bench_adclick(scale: str, device: torch.device, repeats: int) -> tuple[str, float, float]:
    params = method_params("adclick", "mvtec_ad", scale)
    size = 512 if scale == "paper" else 64  # Sec. 3.5 input 512; the residual grid is size / stride 4
    channels = 1024 if scale == "paper" else 128  # the residual stage's d_f (config/features.yaml)
    lang_dim = 768 if scale == "paper" else params["language"]["bert"]["hidden_size"]
    net = ADClickNet(channels, params["dim"], params["depth"], params["heads"], params["window"], 4, lang_dim)
    words = {
        "bottle/broken_large": (
            torch.randn(12, params["language"]["max_words"], lang_dim),
            torch.ones(12, 20),
        )
    }
    words = {k: (f, m[:, : f.shape[1]]) for k, (f, m) in words.items()}
    model = ADClickClickModel(net, device, words, params["click_radius"], lang_dim)
    item = ClickItem(
        torch.randn(channels, size // 4, size // 4), np.zeros((size, size), bool), "bottle/broken_large"
    )
    prepared = model.prepare(item)
    previous = np.zeros((size, size), np.float32)
    return (
        f"ADClick {size}x{size}",
        0.0,
        timed(lambda: model(prepared, clicks(size), previous), device, repeats),
    )


@torch.no_grad()
def bench_sam(scale: str, device: torch.device, repeats: int) -> tuple[str, float, float]:
    params = method_params("sam", "mvtec_ad", scale)
    model = SamClickModel(build_sam(params["architecture"], False, params["weights"], 0), device)
    size = model.input_size
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    embed = timed(lambda: model.prepare(image), device, repeats)
    prepared = model.prepare(image)
    previous = np.zeros((size, size), np.float32)
    return (
        f"SAM {size}x{size}",
        embed,
        timed(lambda: model(prepared, clicks(size), previous), device, repeats),
    )


@torch.no_grad()
def bench_baseline(
    cls: type[FinetunedClickMethod], scale: str, device: torch.device, repeats: int
) -> tuple[str, float, float]:
    """SimpleClick or GPCIS (random weights) at its input size: the image is resized there once (prepare)."""
    params = {**method_params(cls.name, "mvtec_ad", scale), "pretrained": False}
    model = cls(params, device, 0).click_model()
    size = int(params["architecture"]["img_size"])
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    prepare = timed(lambda: model.prepare(image), device, repeats)
    prepared = model.prepare(image)
    previous = np.zeros((size, size), np.float32)
    per_click = timed(lambda: model(prepared, clicks(size), previous), device, repeats)
    return f"{cls.__name__} {size}x{size}", prepare, per_click


def bench_simpleclick(scale: str, device: torch.device, repeats: int) -> tuple[str, float, float]:
    return bench_baseline(SimpleClick, scale, device, repeats)


def bench_gpcis(scale: str, device: torch.device, repeats: int) -> tuple[str, float, float]:
    return bench_baseline(GPCIS, scale, device, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", choices=["paper", "demo"], default="paper")
    parser.add_argument("--features", help="a residual file of the shared stage: report its time per image")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (more oversubscribe 2 cores)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"{'model':<22} {'prepare/image (s)':>18} {'per click (s)':>14}   device {device}, scale {args.scale}"
    )
    for bench in (bench_adclick, bench_sam, bench_simpleclick, bench_gpcis):
        name, prepare, per_click = bench(args.scale, device, args.repeats)
        print(f"{name:<22} {prepare:>18.4f} {per_click:>14.4f}")
    if args.features:
        from defectbench.features.store import ResidualFile

        file = ResidualFile(args.features)
        seconds = float(np.asarray(file.arrays["seconds_per_image"]).mean())
        print(f"residuals ({file.settings['feature_set']}): {seconds:.4f} s/image on {file.arrays['device']}")


if __name__ == "__main__":
    main()
