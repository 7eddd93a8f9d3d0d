"""SegDecNet throughput: training and inference images per second at KolektorSDD2's 232x640 (paper §4.4: 85 fps
inference on an RTX 2080 Ti).

    .venv/bin/python bench/bench_segdec.py [--device cuda] [--batch 1] [--steps 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from defectbench.io import write_json
from defectbench.methods.segdec import SegDecNet, segdec_loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    device: torch.device, height: int, width: int, channels: int, batch: int, steps: int, volume_channels: int
) -> tuple[float, float]:
    """(training images/s, inference images/s) of SGD steps with the full SegDecNet loss, after one warm-up step."""
    torch.manual_seed(0)
    model = SegDecNet(channels, volume_channels).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images = torch.rand(batch, channels, height, width, device=device)
    labels = torch.ones(batch, device=device)
    grid = (batch, 1, height // 8, width // 8)
    targets, weights, gamma = torch.rand(grid, device=device), torch.ones(grid, device=device), labels

    def train_step() -> None:
        decision, seg = model(images)
        loss, _, _ = segdec_loss(decision, seg, labels, targets, weights, gamma, 0.5, 0.5)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def infer_step() -> None:
        decision, seg = model(images)
        torch.sigmoid(decision)
        F.interpolate(torch.sigmoid(seg), size=(height, width), mode="bilinear", align_corners=False)

    rates = []
    for step, train in ((train_step, True), (infer_step, False)):
        model.train(train)
        step()  # warm-up
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        rates.append(steps * batch / (time.perf_counter() - start))
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--size", type=int, nargs=2, default=(640, 232), metavar=("H", "W"))
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--volume-channels", type=int, default=1024)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    device = torch.device(args.device)
    train_ips, infer_ips = measure(
        device, *args.size, args.channels, args.batch, args.steps, args.volume_channels
    )
    print(f"SegDecNet {args.size[1]}x{args.size[0]} (WxH), {args.channels} ch, batch {args.batch}, {device}")
    print(f"{'phase':<10}{'images/s':>10}{'ms/image':>10}")
    for phase, rate in (("train", train_ips), ("inference", infer_ips)):
        print(f"{phase:<10}{rate:>10.2f}{1000 / rate:>10.1f}")
    print("paper: 85 images/s inference on an RTX 2080 Ti (section 4.4)")
    if args.json:
        figures = {"device": str(device), "size_hw": list(args.size), "channels": args.channels, "batch": args.batch,
                   "volume_channels": args.volume_channels, "steps": args.steps,
                   "train_images_per_s": train_ips, "inference_images_per_s": infer_ips}  # fmt: skip
        if device.type == "cuda":
            figures["gpu_name"] = torch.cuda.get_device_name(device)
            figures["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        write_json(args.json, figures)


if __name__ == "__main__":
    main()
