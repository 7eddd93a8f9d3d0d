"""The image-level classifier RA-CAM explains: VGG16 with leaky ReLUs, five stages, a GAP + linear head.

Section IV-B: "VGG16 as the backbone network with leaky ReLU activation functions", SGD, random horizontal and
vertical flips. The head is not stated; we use global average pooling and one linear layer to two logits
(normal, defect), so y^c (Eq. 1) is the defect logit before the softmax.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from defectbench.data.samples import Sample
from defectbench.methods.backbones import create_backbone, imagenet_normalize
from defectbench.methods.images import load_images
from defectbench.training import EpochLoop

VGG16_CONVS_PER_STAGE = (2, 2, 3, 3, 3)
DEFECT_CLASS = 1


class StagedClassifier(nn.Module):
    """Stages of conv + leaky ReLU (each after the first opens with a 2×2 max-pool), GAP, linear → 2 logits.

    `stage_outputs` are the last rectifier modules of each stage, S1–S5 of the paper's Fig. 1: their outputs are
    the feature maps A_l at full, 1/2, …, 1/16 resolution that the CAMs weight.
    """

    def __init__(self, stages: Sequence[nn.Sequential], channels: int):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(channels, 2)

    @property
    def stage_outputs(self) -> list[nn.Module]:
        return [stage[-1] for stage in self.stages]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = images
        for stage in self.stages:
            features = stage(features)
        return self.head(features.mean(dim=(2, 3)))


def _stages_from_layers(layers: Sequence[nn.Module], slope: float) -> list[nn.Sequential]:
    """Split a VGG `features` list at its max-pools, replacing every ReLU by a (non-inplace) leaky ReLU."""
    stages: list[list[nn.Module]] = [[]]
    for layer in layers:
        if isinstance(layer, nn.MaxPool2d):
            stages.append([layer])
        elif isinstance(layer, nn.ReLU):
            stages[-1].append(nn.LeakyReLU(slope))
        else:
            stages[-1].append(layer)
    if (
        len(stages[-1]) == 1
    ):  # VGG ends with a max-pool; global average pooling follows the last stage instead
        stages.pop()
    return [nn.Sequential(*stage) for stage in stages]


def build_classifier(params: Mapping[str, Any], seed: int) -> StagedClassifier:
    """timm VGG16 (ImageNet weights from the local cache when `pretrained`), or, with `stage_channels`, a
    narrower network of the same layout (`convs_per_stage`, default VGG16's 2, 2, 3, 3, 3) with random weights."""
    slope = float(params["leaky_slope"])
    widths = params.get("stage_channels")
    if widths:
        if len(widths) != len(VGG16_CONVS_PER_STAGE) or params["pretrained"]:
            raise ValueError("stage_channels takes 5 widths and needs pretrained: false (no weights exist)")
        layers: list[nn.Module] = []
        in_channels = 3
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            depths = params.get("convs_per_stage") or VGG16_CONVS_PER_STAGE
            for stage, (convs, width) in enumerate(zip(depths, widths, strict=True)):
                if stage:
                    layers.append(nn.MaxPool2d(2))
                for _ in range(convs):
                    conv = nn.Conv2d(in_channels, int(width), 3, padding=1)
                    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="leaky_relu")
                    nn.init.zeros_(conv.bias)  # torchvision's VGG initialisation
                    layers += [conv, nn.ReLU()]
                    in_channels = int(width)
            model = StagedClassifier(_stages_from_layers(layers, slope), in_channels)
        return model
    backbone = create_backbone(params["backbone"], bool(params["pretrained"]), seed=seed)
    layers = list(backbone.features)
    channels = [layer.out_channels for layer in layers if isinstance(layer, nn.Conv2d)][-1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return StagedClassifier(_stages_from_layers(layers, slope), channels)


def random_flips(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image horizontally and, independently, vertically with probability 1/2 (Section IV-B)."""
    horizontal, vertical = (torch.rand(2, len(images), generator=generator) < 0.5).to(images.device)
    images = torch.where(horizontal[:, None, None, None], images.flip(-1), images)
    return torch.where(vertical[:, None, None, None], images.flip(-2), images)


def balanced_epoch(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of one epoch: every positive and as many negatives drawn without replacement, shuffled (the
    paper does not say how the 1:8 class imbalance is handled; this is SegDecNet's balanced sampling)."""
    positives = np.flatnonzero(labels == 1)
    negatives = np.flatnonzero(labels == 0)
    if len(positives) == 0 or len(negatives) == 0:
        raise ValueError("training the classifier needs both defective and defect-free images")
    drawn = rng.choice(negatives, size=min(len(negatives), len(positives)), replace=False)
    return rng.permutation(np.concatenate([positives, drawn]))


def train_classifier(
    model: StagedClassifier,
    samples: Sequence[Sample],
    params: Mapping[str, Any],
    device: torch.device,
    seed: int,
    checkpoint: Path | None,
) -> list[dict[str, float]]:
    """SGD on image labels with random flips and balanced epochs; cross-entropy on the two logits."""
    images = load_images(samples, params["input_size"])
    labels = np.array([sample.label for sample in samples], dtype=np.int64)
    model.to(device).train()
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=float(params["lr"]),
        momentum=float(params["momentum"]),
        weight_decay=float(params["weight_decay"]),
    )
    flips = torch.Generator().manual_seed(seed)
    sampling = np.random.default_rng(seed)
    batch_size = int(params["batch_size"])

    def epoch(_: int) -> dict[str, float]:
        model.train()
        order = balanced_epoch(labels, sampling)
        losses, correct = [], 0
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = random_flips(images[index], flips).to(device)
            target = torch.from_numpy(labels[index]).to(device)
            logits = model(imagenet_normalize(batch))
            loss = F.cross_entropy(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item() * len(index))
            correct += int((logits.argmax(1) == target).sum())
        return {"loss": float(np.sum(losses) / len(order)), "accuracy": correct / len(order)}

    state = {"model": model, "optimizer": optimizer, "flips": flips, "sampling": sampling}
    log = EpochLoop(int(params["epochs"]), checkpoint, desc="racam classifier").run(state, epoch)
    model.eval()
    return log


@torch.no_grad()
def defect_probability(model: StagedClassifier, images: torch.Tensor, device: torch.device) -> np.ndarray:
    """Softmax probability of the defect class for a uint8 batch."""
    logits = model(imagenet_normalize(images.to(device)))
    return torch.softmax(logits, dim=1)[:, DEFECT_CLASS].cpu().numpy()
