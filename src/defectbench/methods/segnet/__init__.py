"""Segmentation networks of the RA-CAM paper's Table III (segmentation-models-pytorch): UNet, DeepLabv3,
DeepLabv3+, trained on the true masks (full supervision) or on RA-CAM pseudo-masks of an upstream `racam` run.

Section IV-B: batch size 4, SGD with learning rate 0.0005 and momentum 0.9, inputs resized as for the classifier.
Cross-entropy over two classes (background, defect) as Section IV-C describes. The map is the softmax defect
probability, so `threshold: fixed:0.5` is the network's arg-max segmentation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch import nn
from torch.nn import functional as F

from defectbench.data.images import DataError
from defectbench.data.samples import Sample
from defectbench.methods.backbones import imagenet_normalize
from defectbench.methods.base import Method, Predictions, register
from defectbench.methods.images import load_images
from defectbench.methods.weights import verify_weights
from defectbench.metrics import otsu_thresholds_per_image
from defectbench.training import EpochLoop, seed_everything

ARCHITECTURES = {"unet": smp.Unet, "deeplabv3": smp.DeepLabV3, "deeplabv3plus": smp.DeepLabV3Plus}
LABEL_SOURCES = ("mask", "pseudo")


def build_network(params: dict[str, Any], seed: int, weights_dir: Path | None = None) -> nn.Module:
    """The smp network with random weights (seeded); with `pretrained`, its encoder takes the ImageNet weights of
    the registry entry of the same name (methods/weights.yaml, e.g. resnet50: torchvision's file), verified:
    timm's ResNets use torchvision's parameter names, which smp's ResNet encoders keep."""
    architecture = params["architecture"]
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"segnet: unknown architecture {architecture!r}; choose one of {list(ARCHITECTURES)}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = ARCHITECTURES[architecture](encoder_name=params["encoder"], encoder_weights=None, classes=2)
    if params["pretrained"]:
        path = verify_weights(params["encoder"], weights_dir)
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, _ = network.encoder.load_state_dict(state, strict=False)
        if missing:
            raise DataError(f"{path} does not fit smp encoder {params['encoder']}: missing {missing[:5]}")
    return network


def pseudo_masks(maps: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RA-CAM post-processing (Section III-C): per-image Otsu threshold, foreground `> t`; images labelled
    defect-free get an empty mask (their image label is the weak supervision)."""
    masks = maps > otsu_thresholds_per_image(maps)[:, None, None]
    return masks & (labels == 1)[:, None, None]


@register("segnet")
class SegmentationNetwork(Method):
    """A fully supervised segmentation network; `labels: pseudo` trains it on the upstream run's CAM masks."""

    network: nn.Module | None = None

    def _training_masks(self, train: list[Sample]) -> tuple[list[Sample], np.ndarray]:
        size = tuple(int(v) for v in self.params["input_size"])
        source = self.params["labels"]
        if source == "pseudo":
            if self.upstream is None:
                raise ValueError("segnet with labels: pseudo needs an `upstream:` CAM run (racam)")
            labels = np.array([sample.label for sample in train])
            maps = np.asarray(self.upstream.predict(train, size).maps, dtype=np.float32)
            return train, pseudo_masks(maps, labels)
        if source != "mask":
            raise ValueError(f"segnet: unknown labels {source!r}; choose one of {LABEL_SOURCES}")
        usable = [sample for sample in train if sample.label == 0 or sample.pixel_label]
        if not any(sample.label == 1 for sample in usable):
            raise DataError("segnet: no defective training image has a usable mask in this split")
        return usable, np.stack([sample.read_mask(size) for sample in usable])

    def fit(self, train: list[Sample], val: list[Sample] | None = None) -> list[dict[str, float]]:
        seed_everything(self.seed)
        samples, masks = self._training_masks(train)
        images = load_images(samples, self.params["input_size"])
        targets = torch.from_numpy(masks.astype(np.int64))
        self.network = build_network(self.params, self.seed).to(self.device)
        optimizer = torch.optim.SGD(
            self.network.parameters(),
            lr=float(self.params["lr"]),
            momentum=float(self.params["momentum"]),
            weight_decay=float(self.params["weight_decay"]),
        )
        order_rng = torch.Generator().manual_seed(self.seed)
        batch_size = int(self.params["batch_size"])
        network = self.network

        def epoch(_: int) -> dict[str, float]:
            network.train()
            order = torch.randperm(len(images), generator=order_rng)
            total = 0.0
            for start in range(0, len(order), batch_size):
                index = order[start : start + batch_size]
                if len(index) < 2:  # BatchNorm cannot train on one image
                    continue
                flip_h, flip_v = torch.rand(2, generator=order_rng) < 0.5
                batch, target = images[index], targets[index]
                if flip_h:
                    batch, target = batch.flip(-1), target.flip(-1)
                if flip_v:
                    batch, target = batch.flip(-2), target.flip(-2)
                logits = network(imagenet_normalize(batch.to(self.device)))
                loss = F.cross_entropy(logits, target.to(self.device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(index)
            return {"loss": total / len(order)}

        checkpoint = self.checkpoint_path
        state = {"network": network, "optimizer": optimizer, "order": order_rng}
        log = EpochLoop(
            int(self.params["epochs"]), checkpoint, desc=f"segnet {self.params['architecture']}"
        ).run(state, epoch)
        network.eval()
        return log

    @torch.no_grad()
    def predict(self, samples: list[Sample], eval_size: tuple[int, int]) -> Predictions:
        if self.network is None:
            raise RuntimeError("segnet: call fit() or load_state_dict() before predict()")
        self.network.eval()
        batch_size = int(self.params["batch_size"])
        maps = []
        for start in range(0, len(samples), batch_size):
            images = load_images(samples[start : start + batch_size], self.params["input_size"])
            logits = self.network(imagenet_normalize(images.to(self.device)))
            probability = torch.softmax(logits, dim=1)[:, 1:2]
            maps.append(
                F.interpolate(probability, size=tuple(eval_size), mode="bilinear", align_corners=False)
            )
        stacked = torch.cat(maps)[:, 0].cpu().numpy() if maps else np.zeros((0, *eval_size), np.float32)
        return Predictions([s.image_id for s in samples], stacked.reshape(len(samples), -1).max(1), stacked)

    def state_dict(self) -> dict[str, Any]:
        if self.network is None:
            raise RuntimeError("segnet: nothing to save before fit()")
        return {"network": self.network.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network = build_network({**self.params, "pretrained": False}, self.seed).to(self.device)
        self.network.load_state_dict(state["network"])
        self.network.eval()
